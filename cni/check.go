package cni

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/meshnet/mesh/api"
)

// Check verifies the attachment is still what Add made it: the daemon holds
// the allocation, the pod's interface has its address, MTU, state and
// routes, and the host veth is up on the bridge. It reports every
// difference at once (code ErrCheckFailed), so one CHECK tells the whole story.
func (p *Plugin) Check(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := validateArgs(args); err != nil {
		return err
	}
	client := api.NewClient(conf.socket())
	allocs, err := client.Allocations(ctx)
	if err != nil {
		return daemonError("list the mesh daemon's allocations", err)
	}
	var alloc *api.Allocation
	for i := range allocs {
		if allocs[i].ContainerID == args.ContainerID && allocs[i].IfName == args.IfName {
			alloc = &allocs[i]
			break
		}
	}
	if alloc == nil {
		return newError(types.ErrUnknownContainer, "the mesh daemon holds no address for container %q interface %q", args.ContainerID, args.IfName)
	}
	att, err := parseAllocation(alloc)
	if err != nil {
		return newError(ErrDaemonRefused, "%v", err)
	}

	pod, err := openNS(args.Netns)
	if err != nil {
		return newError(types.ErrInvalidEnvironmentVariables, "%v", err)
	}
	defer pod.close()
	host, err := openNS(p.HostNS)
	if err != nil {
		return internalError("%v", err)
	}
	defer host.close()

	var diffs []string
	if conf.PrevResult != nil {
		diffs = append(diffs, checkPrevResult(conf.PrevResult, att)...)
	}
	podDiffs, err := checkPod(pod, args.IfName, att)
	if err != nil {
		return err
	}
	diffs = append(diffs, podDiffs...)
	hostDiffs, err := checkHost(host, HostVethName(args.ContainerID, args.IfName), att)
	if err != nil {
		return err
	}
	diffs = append(diffs, hostDiffs...)
	if len(diffs) > 0 {
		return newError(ErrCheckFailed, "CHECK of container %q interface %q failed: %s", args.ContainerID, args.IfName, strings.Join(diffs, "; "))
	}
	return nil
}

// checkPrevResult compares the runtime's record of ADD with the daemon's.
func checkPrevResult(prev types.Result, att *attachment) []string {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return []string{fmt.Sprintf("cannot read prevResult: %v", err)}
	}
	var diffs []string
	for _, want := range att.ips {
		if !slices.ContainsFunc(res.IPs, func(ip *current.IPConfig) bool {
			a, ok := netip.AddrFromSlice(ip.Address.IP)
			return ok && a.Unmap() == want.addr.Addr()
		}) {
			diffs = append(diffs, fmt.Sprintf("prevResult does not hold the address %s", want.addr))
		}
	}
	return diffs
}

// checkPod lists how the pod's interface differs from att. The error is
// for failing to look at all.
func checkPod(pod *nsHandle, ifName string, att *attachment) ([]string, error) {
	link, err := pod.LinkByName(ifName)
	if isNotFound(err) {
		return []string{fmt.Sprintf("interface %q not found in %s", ifName, pod)}, nil
	}
	if err != nil {
		return nil, internalError("failed to look up interface %q in %s: %v", ifName, pod, err)
	}
	var diffs []string
	if _, ok := link.(*netlink.Veth); !ok {
		diffs = append(diffs, fmt.Sprintf("interface %q is a %s, not a veth", ifName, link.Type()))
	}
	if mtu := link.Attrs().MTU; att.mtu != 0 && mtu != att.mtu {
		diffs = append(diffs, fmt.Sprintf("interface %q has MTU %d, want %d", ifName, mtu, att.mtu))
	}
	if link.Attrs().Flags&netlinkUp == 0 {
		diffs = append(diffs, fmt.Sprintf("interface %q is down", ifName))
	}
	for _, ip := range att.ips {
		addrs, err := pod.AddrList(link, family(ip.addr.Addr()))
		if err != nil {
			return nil, internalError("failed to list addresses of %q in %s: %v", ifName, pod, err)
		}
		found := false
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok && p == ip.addr {
				found = true
			}
		}
		if !found {
			diffs = append(diffs, fmt.Sprintf("address %s missing on interface %q", ip.addr, ifName))
		}
		routes, err := pod.RouteList(link, family(ip.addr.Addr()))
		if err != nil {
			return nil, internalError("failed to list routes of %q in %s: %v", ifName, pod, err)
		}
		for _, want := range familyRoutes(link.Attrs().Index, ip) {
			if !hasRoute(routes, want) {
				diffs = append(diffs, fmt.Sprintf("route %s missing on interface %q", describeRoute(want), ifName))
			}
		}
	}
	return diffs, nil
}

// checkHost lists how the host veth differs from att.
func checkHost(host *nsHandle, name string, att *attachment) ([]string, error) {
	link, err := host.LinkByName(name)
	if isNotFound(err) {
		return []string{fmt.Sprintf("host veth %q not found", name)}, nil
	}
	if err != nil {
		return nil, internalError("failed to look up host veth %q: %v", name, err)
	}
	var diffs []string
	if link.Attrs().Flags&netlinkUp == 0 {
		diffs = append(diffs, fmt.Sprintf("host veth %q is down", name))
	}
	bridge, err := host.LinkByName(att.bridge)
	switch {
	case isNotFound(err):
		diffs = append(diffs, fmt.Sprintf("bridge %q not found", att.bridge))
	case err != nil:
		return nil, internalError("failed to look up bridge %q: %v", att.bridge, err)
	case link.Attrs().MasterIndex != bridge.Attrs().Index:
		diffs = append(diffs, fmt.Sprintf("host veth %q is not attached to bridge %q", name, att.bridge))
	}
	return diffs, nil
}

func hasRoute(routes []netlink.Route, want *netlink.Route) bool {
	wantDst, _ := prefixOf(want.Dst)
	for _, r := range routes {
		dst, ok := prefixOf(r.Dst)
		if !ok {
			// netlink reports the default route with a nil Dst.
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if r.Family == netlink.FAMILY_V6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		}
		// IPv6 routes have no scope: the kernel reports every one as
		// universe.
		if dst == wantDst && r.Gw.Equal(want.Gw) && (want.Gw != nil || r.Scope == want.Scope || wantDst.Addr().Is6()) {
			return true
		}
	}
	return false
}

func describeRoute(r *netlink.Route) string {
	if r.Gw != nil {
		return fmt.Sprintf("%s via %s", r.Dst, r.Gw)
	}
	return fmt.Sprintf("%s scope link", r.Dst)
}
