package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/meshnet/mesh/api"
)

// formatPolicies prints one line per NetworkPolicy applied on this node,
// sorted by namespace and name, with the local pods it selects.
func formatPolicies(w io.Writer, st *api.Status) {
	if len(st.Policies) == 0 {
		fmt.Fprintln(w, "No NetworkPolicy applies to this node's pods (policy enforcement runs with --kube).")
		return
	}
	ps := append([]api.PolicyStatus(nil), st.Policies...)
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Namespace != ps[j].Namespace {
			return ps[i].Namespace < ps[j].Namespace
		}
		return ps[i].Name < ps[j].Name
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POLICY\tTYPES\tDENIED\tPODS")
	for _, p := range ps {
		pods := strings.Join(p.Pods, ",")
		if pods == "" {
			pods = "(none on this node)"
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%d\t%s\n", p.Namespace, p.Name, strings.Join(p.Types, ","), p.DeniedPackets, pods)
	}
	tw.Flush()
	for _, p := range ps {
		for _, warn := range p.Warnings {
			fmt.Fprintf(w, "warning: %s/%s: %s\n", p.Namespace, p.Name, warn)
		}
	}
}
