package cni

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/meshnet/mesh/api"
)

// Del undoes Add. It is idempotent: a missing netns, a missing veth or a
// container the daemon does not know are all success, as the runtime may
// call DEL for an ADD that failed half-way, or twice.
//
// The veth is deleted before the address is released, and even when the
// daemon is down: the veth would hold the pod's address after release, and
// deleting it needs no daemon. If the release then fails because the daemon
// is unreachable, DEL fails with code 11 (try again later): the kubelet
// retries DEL until it succeeds, so the address is not leaked. The second
// DEL finds no veth and only releases.
func (p *Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := validateArgs(args); err != nil {
		return err
	}
	// Not while an ADD of the same attachment runs (see lockKey).
	lock, err := lockKey(ctx, conf.lockDir(), args.ContainerID, args.IfName)
	if err != nil {
		return lockError(err)
	}
	defer lock.unlock(true)
	if err := p.deleteVeth(args); err != nil {
		return err
	}
	client := api.NewClient(conf.socket())
	if err := client.Release(ctx, args.ContainerID, args.IfName); err != nil {
		return daemonError(fmt.Sprintf("release the address of container %q (its veth is gone; DEL must be retried)", args.ContainerID), err)
	}
	return nil
}

// deleteVeth deletes the pod's interface and the host veth, whichever exist.
func (p *Plugin) deleteVeth(args *skel.CmdArgs) error {
	if args.Netns != "" {
		pod, err := openNS(args.Netns)
		switch {
		case errors.Is(err, os.ErrNotExist) || errors.Is(err, errNotNetNS):
			// The pod's netns is gone, and with it the veth pair.
		case err != nil:
			return internalError("%v", err)
		default:
			err := deleteLink(pod, args.IfName)
			pod.close()
			if err != nil {
				return err
			}
		}
	}
	// The host end normally went with the pod's end; this catches a pair
	// whose pod end was renamed or whose netns is not given (CNI_NETNS is
	// optional for DEL).
	host, err := openNS(p.HostNS)
	if err != nil {
		return internalError("%v", err)
	}
	defer host.close()
	return deleteLink(host, HostVethName(args.ContainerID, args.IfName))
}

// deleteLink deletes the veth named name in ns, if there is one. Links of
// other types are left alone: they are not mesh-cni's.
func deleteLink(ns *nsHandle, name string) error {
	link, err := ns.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return internalError("failed to look up interface %q in %s: %v", name, ns, err)
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return nil
	}
	if err := ns.LinkDel(link); err != nil && !isNotFound(err) {
		return newError(types.ErrIOFailure, "failed to delete veth %q in %s: %v", name, ns, err)
	}
	return nil
}
