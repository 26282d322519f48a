package cni

import (
	"context"
	"errors"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshnet/mesh/api"
)

// GC releases every allocation of the configuration's network (its "name")
// that is not one of its cni.dev/valid-attachments (CNI 1.1). Allocations
// of other networks using the same daemon are not in the list and are left
// alone: ADD records the network with each allocation. Veths need no
// collecting: a pair goes away with the pod's netns.
func (p *Plugin) GC(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid := make([]api.ReleaseRequest, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid = append(valid, api.ReleaseRequest{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	client := api.NewClient(conf.socket())
	if _, err := client.GC(ctx, conf.Name, valid); err != nil {
		return daemonError("collect stale addresses", err)
	}
	return nil
}

// Status reports whether ADD can succeed now: the daemon answers and its
// IPAM is ready. Anything else is code 50 (plugin not available), with a
// message saying what is wrong.
func (p *Plugin) Status(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	st, err := api.NewClient(conf.socket()).Status(ctx)
	switch {
	case errors.Is(err, api.ErrDaemonUnreachable):
		return newError(types.ErrPluginNotAvailable, "%v", err)
	case err != nil:
		return newError(types.ErrPluginNotAvailable, "failed to get the mesh daemon's status: %v", err)
	case st.IPAM == nil:
		return newError(types.ErrPluginNotAvailable, "the mesh daemon at %s has no IPAM (was it launched without an IP range?)", conf.socket())
	case st.IPAM.Status != "ready":
		msg := "the mesh daemon's IPAM is " + quoteOr(st.IPAM.Status, "not ready")
		if len(st.IPAM.Problems) > 0 {
			msg += ": " + strings.Join(st.IPAM.Problems, "; ")
		}
		return newError(types.ErrPluginNotAvailable, "%s", msg)
	}
	return nil
}

func quoteOr(s, empty string) string {
	if s == "" {
		return empty
	}
	return `"` + s + `"`
}
