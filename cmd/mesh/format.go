package main

import (
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshnet/mesh/api"
)

// ipamLine is one family's IPAM in the overview.
func ipamLine(ip *api.IPAM) string {
	return fmt.Sprintf("%s, range %s, %d owned range(s), %d allocated, %d free", ip.Status, ip.Range, len(ip.Owned), ip.Allocated, ip.Free)
}

// formatStatus prints the overview: this node, a count of peers by state,
// and every target that is not connected with what is wrong.
func formatStatus(w io.Writer, st *api.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", st.Name)
	fmt.Fprintf(tw, "Peer ID:\t%s\n", st.PeerID)
	fmt.Fprintf(tw, "Version:\t%s\n", st.Version)
	counts := map[api.MemberState]int{}
	for _, p := range st.Peers {
		counts[p.State]++
	}
	fmt.Fprintf(tw, "Peers:\t%d (%s)\n", len(st.Peers), stateCounts(counts, api.MemberStates))
	if len(st.KeyIDs) > 0 {
		fmt.Fprintf(tw, "Mesh keys:\t%s\n", formatKeyIDs(st.KeyIDs, st.GossipKeyID))
	}
	if st.IPAM != nil {
		fmt.Fprintf(tw, "IPAM:\t%s\n", ipamLine(st.IPAM))
	}
	if st.IPAM6 != nil {
		fmt.Fprintf(tw, "IPAM IPv6:\t%s\n", ipamLine(st.IPAM6))
	}
	if st.OverlayIP != "" {
		hint := ""
		if st.Dataplane != "" {
			// The cluster range is routed from the host, and containers
			// have the overlay IP as their gateway.
			hint = fmt.Sprintf(" on this host's bridge: containers reach this host at %s, host processes reach containers at their mesh addresses", st.OverlayIP)
		}
		fmt.Fprintf(tw, "Overlay IP:\t%s%s\n", st.OverlayIP, hint)
	}
	if st.OverlayIP6 != "" {
		fmt.Fprintf(tw, "Overlay IPv6:\t%s\n", st.OverlayIP6)
	}
	if st.Dataplane != "" {
		conns := map[api.ConnState]int{}
		for _, c := range st.Connections {
			conns[c.State]++
		}
		// The data-plane process on the same line: a longer label would
		// realign every line that scripts may match.
		proc := ""
		if p := st.DataplaneProcess; p != nil {
			pid := ""
			if p.PID != 0 {
				pid = fmt.Sprintf(" PID %d,", p.PID)
			}
			proc = fmt.Sprintf("; process mesh-dataplane %s,%s %d restart(s) (--dataplane-process %s)", p.State, pid, p.Restarts, p.Mode)
		}
		fmt.Fprintf(tw, "Data plane:\t%s, MTU %d, connections: %s%s\n", st.Dataplane, st.MTU, stateCounts(conns, api.ConnStates), proc)
	}
	if gr := st.GossipRelay; gr != nil && gr.Reachability == api.ReachBehindNAT {
		fmt.Fprintf(tw, "Reachability:\tbehind NAT: %s could not connect to this node's gossip address (it sees this node as %s)\n", gr.CheckedBy, gr.SeenAs)
	}
	if gr := st.GossipRelay; gr != nil && gr.NATPort != "" {
		var line string
		switch gr.NATPort {
		case api.NATPortAsking:
			line = "asking the peers which port the NAT gives this node's WireGuard packets"
		case api.NATPortKept:
			line = "kept: the NAT keeps this node's WireGuard port"
		case api.NATPortMapped:
			line = fmt.Sprintf("mapped: the NAT gives this node's WireGuard packets port %d for every peer (announced)", gr.PublicPort)
		case api.NATPortVaries:
			line = "varies per peer: the NAT gives this node's WireGuard packets a different port per destination; pairs with other nodes behind NAT are relayed"
		default:
			line = string(gr.NATPort)
		}
		fmt.Fprintf(tw, "NAT port:\t%s\n", line)
	}
	if gr := st.GossipRelay; gr != nil && gr.Home != "" {
		fmt.Fprintf(tw, "NAT home:\t%s (this node is behind NAT: the others reach its gossip through it)\n", gr.Home)
	}
	if gr := st.GossipRelay; gr != nil && len(gr.Attached) > 0 {
		fmt.Fprintf(tw, "Behind NAT:\t%s (their gossip goes through this node)\n", strings.Join(gr.Attached, ", "))
	}
	tw.Flush()
	formatTargets(w, st.Targets, now)
	problems := append([]string(nil), st.Problems...)
	if st.IPAM != nil {
		problems = append(problems, st.IPAM.Problems...)
	}
	if st.IPAM6 != nil {
		for _, p := range st.IPAM6.Problems {
			problems = append(problems, "IPv6: "+p)
		}
	}
	if len(problems) > 0 {
		fmt.Fprintln(w, "\nProblems:")
		for _, p := range problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}

// formatKeyIDs lists the mesh key IDs held, newest first, marking the one
// gossip is encrypted with: what an operator checks during a rotation.
func formatKeyIDs(ids []string, gossip string) string {
	s := ""
	for i, id := range ids {
		if i > 0 {
			s += ", "
		}
		s += id
		if id == gossip {
			s += " (gossip)"
		}
	}
	return s
}

func stateCounts[S ~string](counts map[S]int, order []S) string {
	s := ""
	for _, k := range order {
		if counts[k] == 0 {
			continue
		}
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%d %s", counts[k], k)
	}
	if s == "" {
		return "none"
	}
	return s
}

func formatTargets(w io.Writer, targets []api.Target, now time.Time) {
	if len(targets) == 0 {
		return
	}
	ts := append([]api.Target(nil), targets...)
	sort.Slice(ts, func(i, j int) bool { return ts[i].Address < ts[j].Address })
	fmt.Fprintln(w, "\nTargets:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ADDRESS\tSOURCE\tSTATE\tDETAIL")
	for _, t := range ts {
		detail := ""
		if t.State != "connected" {
			detail = t.Error
			if next, err := time.Parse(time.RFC3339, t.NextRetry); err == nil {
				in := next.Sub(now).Round(time.Second)
				if in < 0 {
					in = 0
				}
				if detail != "" {
					detail += "; "
				}
				detail += "next retry in " + in.String()
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Address, t.Source, t.State, detail)
	}
	tw.Flush()
}

// formatPeers prints one aligned line per member, sorted by name.
func formatPeers(w io.Writer, st *api.Status) {
	ps := append([]api.Peer(nil), st.Peers...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tSTATE\tPEER ID\tIDENTITY")
	for _, p := range ps {
		name := p.Name
		if p.Self {
			name += " (self)"
		}
		// A peer without a verified identity is of the previous
		// release (or this node's own entry before its first update).
		ident := p.Identity
		if ident == "" {
			ident = "unsigned"
		}
		addr := p.Address
		if p.PublicAddress != "" {
			// Behind NAT: where the others send its data plane.
			public := p.PublicAddress
			if a, err := netip.ParseAddr(public); err == nil && p.PublicPort > 0 && p.PublicPort <= 65535 {
				public = netip.AddrPortFrom(a, uint16(p.PublicPort)).String()
			}
			addr += " (public " + public + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, addr, p.State, p.PeerID, ident)
	}
	tw.Flush()
}
