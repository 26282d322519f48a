package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshnet/mesh/api"
)

// rollbackTimeout bounds the release of a failed ADD's allocation; it gets
// its own deadline because the ADD's may be what failed.
const rollbackTimeout = 5 * time.Second

// attachment is what the daemon's allocation means for the pod's wiring.
type attachment struct {
	// ips are the pod's addresses, one per family of the mesh (IPv4
	// first in a dual-stack mesh), each with its gateway.
	ips    []podIP
	bridge string
	mtu    int              // 0: the bridge's
	mac    net.HardwareAddr // nil: random (a daemon without port isolation)
}

// podIP is one of the pod's addresses.
type podIP struct {
	addr    netip.Prefix // the pod's address, a host prefix
	gateway netip.Addr   // the node's overlay IP of that family, on the bridge
}

// parseAllocation validates the daemon's answer, so a daemon bug is reported
// as such instead of as a strange netlink error.
func parseAllocation(a *api.Allocation) (*attachment, error) {
	if a.MTU < 0 {
		return nil, fmt.Errorf("the mesh daemon returned an invalid MTU %d", a.MTU)
	}
	att := &attachment{bridge: a.Bridge, mtu: a.MTU}
	ip, err := parsePodIP(a.Address, a.Gateway)
	if err != nil {
		return nil, err
	}
	att.ips = append(att.ips, ip)
	if a.Address6 != "" {
		// Dual-stack: the IPv6 address beside the IPv4 one.
		ip6, err := parsePodIP(a.Address6, a.Gateway6)
		if err != nil {
			return nil, err
		}
		if ip6.addr.Addr().Is4() || ip.addr.Addr().Is6() {
			return nil, fmt.Errorf("the mesh daemon returned addresses %s and %s, want IPv4 and IPv6", ip.addr, ip6.addr)
		}
		att.ips = append(att.ips, ip6)
	}
	if a.MAC != "" {
		if att.mac, err = net.ParseMAC(a.MAC); err != nil || len(att.mac) != 6 {
			return nil, fmt.Errorf("the mesh daemon returned an invalid MAC %q", a.MAC)
		}
	}
	if att.bridge == "" {
		att.bridge = defaultBridge
	}
	return att, nil
}

// parsePodIP validates one address of the daemon's answer and its gateway.
func parsePodIP(address, gateway string) (podIP, error) {
	addr, err := netip.ParsePrefix(address)
	if err != nil {
		return podIP{}, fmt.Errorf("the mesh daemon returned an invalid address %q: %w", address, err)
	}
	if !addr.IsSingleIP() {
		return podIP{}, fmt.Errorf("the mesh daemon returned address %q, want a host prefix (/32 or /128)", address)
	}
	gw, err := netip.ParseAddr(gateway)
	if err != nil {
		return podIP{}, fmt.Errorf("the mesh daemon returned an invalid gateway %q: %w", gateway, err)
	}
	if gw.Is4() != addr.Addr().Is4() {
		return podIP{}, fmt.Errorf("the mesh daemon returned gateway %s for address %s of another family", gw, addr)
	}
	return podIP{addr: addr, gateway: gw}, nil
}

// validateArgs checks what the runtime passed in the environment, as skel
// does, for callers (tests, other runtimes' libraries) that bypass skel.
func validateArgs(args *skel.CmdArgs) error {
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return err
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return types.NewError(err.Code, fmt.Sprintf("invalid interface name %q (CNI_IFNAME): %s", args.IfName, err.Msg), err.Details)
	}
	return nil
}

// Add wires the pod: allocate its address, create the veth pair, configure
// both ends. On any failure everything done so far is undone.
func (p *Plugin) Add(ctx context.Context, args *skel.CmdArgs) (_ *current.Result, retErr error) {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	if err := validateArgs(args); err != nil {
		return nil, err
	}
	if args.Netns == "" {
		return nil, newError(types.ErrInvalidEnvironmentVariables, "missing pod netns (CNI_NETNS)")
	}
	pod, err := openNS(args.Netns)
	if err != nil {
		return nil, newError(types.ErrInvalidEnvironmentVariables, "%v", err)
	}
	defer pod.close()
	host, err := openNS(p.HostNS)
	if err != nil {
		return nil, internalError("%v", err)
	}
	defer host.close()

	// One ADD or DEL of this attachment at a time: a concurrent ADD of the
	// same key gets the same allocation, so its rollback would release
	// this one's address.
	lock, err := lockKey(ctx, conf.lockDir(), args.ContainerID, args.IfName)
	if err != nil {
		return nil, lockError(err)
	}
	defer lock.unlock(false)

	client := api.NewClient(conf.socket())
	// Checked before allocating: the allocation is idempotent, so it may be
	// the one of this very interface, which rolling back would break. An
	// ADD that finds the attachment already wired (a retry, or one that
	// waited for the lock above) succeeds with it.
	if _, err := pod.LinkByName(args.IfName); err == nil {
		return existing(ctx, client, args, pod, host)
	} else if !isNotFound(err) {
		return nil, internalError("failed to look up interface %q in %s: %v", args.IfName, pod, err)
	}

	ns, name := podName(args.Args)
	alloc, err := allocate(ctx, client, api.AllocateRequest{ContainerID: args.ContainerID, IfName: args.IfName, Network: conf.Name, PodNamespace: ns, PodName: name})
	if err != nil {
		return nil, daemonError(fmt.Sprintf("allocate an address for container %q", args.ContainerID), err)
	}
	success := false
	defer func() {
		if success {
			return
		}
		rctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
		defer cancel()
		if err := client.Release(rctx, args.ContainerID, args.IfName); err != nil {
			retErr = withDetails(retErr, fmt.Sprintf("also failed to release the addresses of container %q: %v", args.ContainerID, err))
		}
	}()
	att, err := parseAllocation(alloc)
	if err != nil {
		return nil, newError(ErrDaemonRefused, "%v", err)
	}

	bridge, err := host.LinkByName(att.bridge)
	if err != nil {
		if isNotFound(err) {
			return nil, newError(types.ErrTryAgainLater, "bridge %q not found in the %s (is `mesh launch` running?)", att.bridge, host)
		}
		return nil, internalError("failed to look up bridge %q: %v", att.bridge, err)
	}
	if att.mtu == 0 {
		att.mtu = bridge.Attrs().MTU
	}

	hostName := HostVethName(args.ContainerID, args.IfName)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostName, MTU: att.mtu},
		PeerName:      args.IfName,
		PeerMTU:       uint32(att.mtu),
		PeerNamespace: netlink.NsFd(pod.fd),
		// The bridge admits only this MAC from the pod's port.
		PeerHardwareAddr: att.mac,
	}
	// The master is set separately: netlink's LinkAdd would leave the veth
	// behind, unknown to the rollback below, if setting it failed.
	if err := host.LinkAdd(veth); err != nil {
		return nil, internalError("failed to create veth pair %q (host) / %q (in %s): %v", hostName, args.IfName, pod, err)
	}
	defer func() {
		if !success {
			// Deleting one end deletes the pair.
			if err := host.LinkDel(veth); err != nil && !isNotFound(err) {
				retErr = withDetails(retErr, fmt.Sprintf("also failed to delete veth %q: %v", hostName, err))
			}
		}
	}()
	hostLink, err := host.LinkByName(hostName)
	if err != nil {
		return nil, internalError("failed to look up veth %q: %v", hostName, err)
	}
	if err := host.LinkSetMaster(hostLink, bridge); err != nil {
		return nil, internalError("failed to attach veth %q to bridge %q: %v", hostName, att.bridge, err)
	}
	// Hairpin: with br_netfilter calling iptables, a packet from the pod
	// that kube-proxy DNATs back to the pod itself (its own Service) is
	// bridged back out of the port it came in by, which the bridge refuses
	// unless the port is in hairpin mode. See docs/kubernetes.md.
	if err := host.LinkSetHairpin(hostLink, true); err != nil {
		return nil, internalError("failed to set hairpin mode on veth %q: %v", hostName, err)
	}
	podLink, err := configurePod(pod, args.IfName, att)
	if err != nil {
		return nil, internalError("%v", err)
	}
	if err := host.LinkSetUp(hostLink); err != nil {
		return nil, internalError("failed to set veth %q up: %v", hostName, err)
	}
	success = true
	return newResult(args, att, hostLink, podLink), nil
}

// existing returns the result of an attachment an earlier ADD wired: the
// daemon holds an allocation for the key, the pod's interface has that
// address and the host veth exists. Anything else is the error of an
// interface that is in the way, and nothing is touched.
func existing(ctx context.Context, client *api.Client, args *skel.CmdArgs, pod, host *nsHandle) (*current.Result, error) {
	inTheWay := func(why string) error {
		return internalError("interface %q already exists in %s (%s)", args.IfName, pod, why)
	}
	allocs, err := client.Allocations(ctx)
	if err != nil {
		return nil, daemonError(fmt.Sprintf("look up the address of container %q", args.ContainerID), err)
	}
	i := slices.IndexFunc(allocs, func(a api.Allocation) bool {
		return a.ContainerID == args.ContainerID && a.IfName == args.IfName
	})
	if i < 0 {
		return nil, inTheWay("the mesh daemon holds no address for it")
	}
	att, err := parseAllocation(&allocs[i])
	if err != nil {
		return nil, newError(ErrDaemonRefused, "%v", err)
	}
	podLink, err := pod.LinkByName(args.IfName)
	if err != nil {
		return nil, internalError("failed to look up interface %q in %s: %v", args.IfName, pod, err)
	}
	for _, ip := range att.ips {
		addrs, err := pod.AddrList(podLink, family(ip.addr.Addr()))
		if err != nil {
			return nil, internalError("failed to list the addresses of %q in %s: %v", args.IfName, pod, err)
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { p, ok := prefixOf(a.IPNet); return ok && p == ip.addr }) {
			return nil, inTheWay(fmt.Sprintf("without its address %s", ip.addr))
		}
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	hostLink, err := host.LinkByName(hostName)
	if err != nil {
		return nil, inTheWay(fmt.Sprintf("host veth %q: %v", hostName, err))
	}
	att.mtu = podLink.Attrs().MTU
	return newResult(args, att, hostLink, podLink), nil
}

// lockError maps a failure to take an attachment's lock to CNI: waiting
// too long is "try again later".
func lockError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return newError(types.ErrTryAgainLater, "%v", err)
	}
	return internalError("%v", err)
}

// allocate asks the daemon for the address of the request's (containerID,
// ifName) in its network, for its pod. A daemon older than the network and
// pod fields refuses them as unknown; it is asked again without, as it
// collects no GC by network and enforces no policy at ADD anyway.
func allocate(ctx context.Context, client *api.Client, req api.AllocateRequest) (*api.Allocation, error) {
	alloc, err := client.AllocateFor(ctx, req)
	var re *api.RequestError
	if errors.As(err, &re) && re.Code == http.StatusBadRequest && strings.Contains(re.Message, "unknown field") {
		return client.Allocate(ctx, req.ContainerID, req.IfName)
	}
	return alloc, err
}

// configurePod gives the pod's end its address, MTU and routes, and sets it
// and lo up.
func configurePod(pod *nsHandle, ifName string, att *attachment) (netlink.Link, error) {
	lo, err := pod.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("failed to look up lo in %s: %w", pod, err)
	}
	if err := pod.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("failed to set lo up in %s: %w", pod, err)
	}
	link, err := pod.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("failed to look up interface %q in %s: %w", ifName, pod, err)
	}
	for _, ip := range att.ips {
		addr := &netlink.Addr{IPNet: ipNet(ip.addr)}
		if ip.addr.Addr().Is6() {
			// No duplicate address detection: the address is the
			// IPAM's to give, and a tentative address would fail the
			// first connections (ping -6 right after ADD).
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := pod.AddrAdd(link, addr); err != nil {
			return nil, fmt.Errorf("failed to add address %s to %q in %s: %w", ip.addr, ifName, pod, err)
		}
	}
	if err := pod.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("failed to set %q up in %s: %w", ifName, pod, err)
	}
	for _, r := range podRoutes(link.Attrs().Index, att) {
		if err := pod.RouteAdd(r); err != nil {
			return nil, fmt.Errorf("failed to add route %s in %s: %w", r, pod, err)
		}
	}
	return link, nil
}

// podRoutes are the pod's routes, for each family: the gateway on-link, as
// the pod's address is a host prefix and so has no connected route, then
// the default route through the gateway.
func podRoutes(linkIndex int, att *attachment) []*netlink.Route {
	var out []*netlink.Route
	for _, ip := range att.ips {
		out = append(out, familyRoutes(linkIndex, ip)...)
	}
	return out
}

// familyRoutes are the pod's routes of ip's family.
func familyRoutes(linkIndex int, ip podIP) []*netlink.Route {
	gw := netip.PrefixFrom(ip.gateway, ip.gateway.BitLen())
	return []*netlink.Route{
		{LinkIndex: linkIndex, Dst: ipNet(gw), Scope: netlink.SCOPE_LINK},
		{LinkIndex: linkIndex, Dst: ipNet(defaultRoute(ip.gateway)), Gw: net.IP(ip.gateway.AsSlice())},
	}
}

func defaultRoute(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// newResult is ADD's answer: the host veth (index 0), the pod interface
// (index 1) that the addresses belong to (IPv4 first in a dual-stack
// mesh), and the pod's routes of each family.
func newResult(args *skel.CmdArgs, att *attachment, hostLink, podLink netlink.Link) *current.Result {
	scopeLink := int(netlink.SCOPE_LINK)
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: hostLink.Attrs().Name, Mac: hostLink.Attrs().HardwareAddr.String()},
			{Name: args.IfName, Mac: podLink.Attrs().HardwareAddr.String(), Mtu: att.mtu, Sandbox: args.Netns},
		},
	}
	for _, ip := range att.ips {
		gw := net.IP(ip.gateway.AsSlice())
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(1), Address: *ipNet(ip.addr), Gateway: gw})
		res.Routes = append(res.Routes,
			&types.Route{Dst: *ipNet(netip.PrefixFrom(ip.gateway, ip.gateway.BitLen())), Scope: &scopeLink},
			&types.Route{Dst: *ipNet(defaultRoute(ip.gateway)), GW: gw})
	}
	return res
}

// print writes res converted to the configuration's cniVersion.
func (p *Plugin) print(res *current.Result, stdin []byte) error {
	conf, err := parseConfig(stdin)
	if err != nil {
		return err
	}
	return printResult(p.stdout(), res, conf.CNIVersion)
}

func printResult(w io.Writer, res types.Result, cniVersion string) error {
	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return newError(types.ErrIncompatibleCNIVersion, "failed to convert the result to cniVersion %q: %v", cniVersion, err)
	}
	if err := out.PrintTo(w); err != nil {
		return newError(types.ErrIOFailure, "failed to write the result: %v", err)
	}
	return nil
}

// withDetails appends a rollback failure to err's details, so the original
// failure stays the message.
func withDetails(err error, detail string) error {
	var e *types.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("%w; %s", err, detail)
	}
	out := *e
	if out.Details != "" {
		out.Details += "; "
	}
	out.Details += detail
	return &out
}

// podName returns K8S_POD_NAMESPACE and K8S_POD_NAME from CNI_ARGS
// ("K=V;K=V"), empty when the runtime is not the kubelet.
func podName(cniArgs string) (namespace, name string) {
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			namespace = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	return namespace, name
}
