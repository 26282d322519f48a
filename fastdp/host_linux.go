package fastdp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureLinkState sets a link's MTU and alias and brings it up, each only if
// needed.
func (d *dataplane) ensureLinkState(l netlink.Link, mtu int, alias string) error {
	a := l.Attrs()
	if a.MTU != mtu {
		if err := d.nl.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("failed to set MTU of link %q to %d: %w", a.Name, mtu, err)
		}
		d.log.Info("set link MTU", "link", a.Name, "mtu", mtu, "was", a.MTU)
	}
	if a.Alias != alias {
		if err := d.nl.LinkSetAlias(l, alias); err != nil {
			return fmt.Errorf("failed to set alias of link %q: %w", a.Name, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("failed to bring up link %q: %w", a.Name, err)
		}
	}
	return nil
}

// ensureBridge creates or adopts the bridge for local pods.
func (d *dataplane) ensureBridge(want *Config, undo *undoStack) (netlink.Link, error) {
	name := want.BridgeName
	br, err := linkByName(d.nl, name)
	switch {
	case err == nil:
		if br.Type() != "bridge" {
			return nil, fmt.Errorf("link %q exists and is a %s, not a bridge", name, br.Type())
		}
	case isNotFound(err):
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.MTU = want.MTU
		if err := d.nl.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("failed to create bridge %q: %w", name, err)
		}
		if br, err = linkByName(d.nl, name); err != nil {
			_ = d.nl.LinkDel(&netlink.Bridge{LinkAttrs: la})
			return nil, fmt.Errorf("failed to look up bridge %q after creating it: %w", name, err)
		}
		undo.push(fmt.Sprintf("remove bridge %q", name), func() error { return d.nl.LinkDel(br) })
		d.log.Info("created bridge", "bridge", name)
	default:
		return nil, fmt.Errorf("failed to look up bridge %q: %w", name, err)
	}
	if err := d.ensureLinkState(br, want.MTU, aliasBridge); err != nil {
		return nil, err
	}
	return br, nil
}

// ensureBridgeAddr leaves exactly the valid prefixes of wants (the overlay
// address of each family; none when all are zero) on the bridge, besides
// the IPv6 link-local address the kernel manages.
func (d *dataplane) ensureBridgeAddr(br netlink.Link, wants []netip.Prefix, undo *undoStack) error {
	return d.ensureLinkAddrs(br, "bridge", wants, undo)
}

// ensureLinkAddrs leaves exactly the valid prefixes of wants on link l
// (what names its role in messages), besides the IPv6 link-local address
// the kernel manages.
func (d *dataplane) ensureLinkAddrs(l netlink.Link, what string, wants []netip.Prefix, undo *undoStack) error {
	name := l.Attrs().Name
	addrs, err := dump(func() ([]netlink.Addr, error) { return d.nl.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("failed to list addresses of %s %q: %w", what, name, err)
	}
	found := map[netip.Prefix]bool{}
	for _, a := range addrs {
		p, ok := prefixOf(*a.IPNet)
		if !ok {
			continue
		}
		switch {
		case slices.Contains(wants, p) && p.IsValid():
			found[p] = true
		case p.Addr().IsLinkLocalUnicast():
		default:
			if err := d.nl.AddrDel(l, &a); err != nil {
				return fmt.Errorf("failed to remove stale address %s from %s %q: %w", p, what, name, err)
			}
			d.log.Info("removed stale "+what+" address", "link", name, "addr", p.String())
		}
	}
	for _, want := range wants {
		if found[want] || !want.IsValid() {
			continue
		}
		if err := d.addLinkAddr(l, what, want, undo); err != nil {
			return err
		}
	}
	return nil
}

// addLinkAddr adds want to link l.
func (d *dataplane) addLinkAddr(l netlink.Link, what string, want netip.Prefix, undo *undoStack) error {
	name := l.Attrs().Name
	addr := &netlink.Addr{IPNet: ipNet(want)}
	if want.Addr().Is6() {
		// Usable at once: duplicate address detection would keep it
		// tentative, and routes using it as their source would fail.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := d.nl.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("failed to add address %s to %s %q: %w", want, what, name, err)
	}
	undo.push(fmt.Sprintf("remove address %s from %s %q", want, what, name), func() error { return d.nl.AddrDel(l, addr) })
	d.log.Info("added "+what+" address", "link", name, "addr", want.String())
	return nil
}

type routeSpec struct {
	dst   netip.Prefix
	link  int
	src   netip.Addr
	links string // name of the link, for messages
}

// desiredRoutes lists the routes of the addressing scheme in the package
// comment.
// The source of each route is the bridge address of its family.
// With an inner device (inner, nil without one) come its routes and the
// pins (Inner).
func desiredRoutes(want *Config, wgLink, br, inner netlink.Link) []routeSpec {
	src := func(dst netip.Prefix) netip.Addr { return want.bridgeAddrOf(dst.Addr()).Addr() }
	var rs []routeSpec
	for _, r := range []netip.Prefix{want.ClusterRange, want.ClusterRange6} {
		if r.IsValid() {
			rs = append(rs, routeSpec{dst: r, link: wgLink.Attrs().Index, src: src(r), links: wgLink.Attrs().Name})
		}
	}
	for _, r := range want.LocalRanges {
		rs = append(rs, routeSpec{dst: r, link: br.Attrs().Index, src: src(r), links: br.Attrs().Name})
	}
	for _, h := range want.LocalHosts {
		rs = append(rs, routeSpec{dst: h, link: br.Attrs().Index, src: src(h), links: br.Attrs().Name})
	}
	for _, h := range want.RemoteHosts {
		rs = append(rs, routeSpec{dst: h, link: wgLink.Attrs().Index, src: src(h), links: wgLink.Attrs().Name})
	}
	if in := want.Inner; in != nil && inner != nil {
		for _, r := range in.Routes {
			rs = append(rs, routeSpec{dst: r, link: inner.Attrs().Index, src: src(r), links: inner.Attrs().Name})
		}
		for _, h := range in.Pins {
			rs = append(rs, routeSpec{dst: h, link: wgLink.Attrs().Index, src: in.Addr.Addr(), links: wgLink.Attrs().Name})
		}
		for _, h := range in.Direct {
			rs = append(rs, routeSpec{dst: h, link: wgLink.Attrs().Index, src: src(h), links: wgLink.Attrs().Name})
		}
	}
	return rs
}

func (r routeSpec) route() *netlink.Route {
	var src net.IP
	if r.src.IsValid() {
		src = r.src.AsSlice()
	}
	return &netlink.Route{
		LinkIndex: r.link,
		Dst:       ipNet(r.dst),
		Src:       src,
		Scope:     netlink.SCOPE_LINK,
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// ensureRoutes makes the routes carrying RouteProtocol in the main table
// exactly the desired ones.
func (d *dataplane) ensureRoutes(want *Config, wgLink, br, inner netlink.Link, undo *undoStack) error {
	desired := map[netip.Prefix]routeSpec{}
	var order []netip.Prefix
	for _, r := range desiredRoutes(want, wgLink, br, inner) {
		if _, dup := desired[r.dst]; dup {
			// A local range equal to the cluster range, or a host
			// prefix equal to a /32 range: the later entry wins, as
			// the more specific intent (bridge over WireGuard for the
			// cluster range, a host's holder over the range's owner).
			desired[r.dst] = r
			continue
		}
		desired[r.dst] = r
		order = append(order, r.dst)
	}

	cur, err := listOwnRoutes(d.nl, false)
	if err != nil {
		return err
	}
	have := map[netip.Prefix]bool{}
	for _, r := range cur {
		var p netip.Prefix
		if r.Dst != nil {
			p, _ = prefixOf(*r.Dst)
		}
		spec, ok := desired[p]
		if !ok || have[p] {
			if err := d.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("failed to remove stale route %s: %w", r.Dst, err)
			}
			d.log.Info("removed stale route", "dst", fmt.Sprint(r.Dst))
			continue
		}
		have[p] = true
		if r.LinkIndex != spec.link || !bytes.Equal(r.Src.To16(), spec.route().Src.To16()) {
			if err := d.nl.RouteReplace(spec.route()); err != nil {
				return fmt.Errorf("failed to replace route %s dev %s: %w", p, spec.links, err)
			}
			d.log.Info("replaced route", "dst", p.String(), "dev", spec.links)
		}
	}
	for _, p := range order {
		if have[p] {
			continue
		}
		spec := desired[p]
		rt := spec.route()
		if err := d.nl.RouteAdd(rt); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("failed to add route %s dev %s: a route for it exists that mesh did not install: %w", p, spec.links, err)
			}
			return fmt.Errorf("failed to add route %s dev %s: %w", p, spec.links, err)
		}
		undo.push(fmt.Sprintf("remove route %s", p), func() error { return d.nl.RouteDel(rt) })
		d.log.Info("added route", "dst", p.String(), "dev", spec.links)
	}
	return nil
}

// listOwnRoutes lists the routes carrying RouteProtocol, of the main table
// or, with allTables, of every table.
func listOwnRoutes(nl *netlink.Handle, allTables bool) ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol}
	mask := uint64(netlink.RT_FILTER_PROTOCOL)
	if allTables {
		filter.Table = unix.RT_TABLE_UNSPEC
		mask |= netlink.RT_FILTER_TABLE
	}
	rs, err := dump(func() ([]netlink.Route, error) { return nl.RouteListFiltered(netlink.FAMILY_ALL, filter, mask) })
	if err != nil {
		return nil, fmt.Errorf("failed to list routes: %w", err)
	}
	return rs, nil
}

// ensureForwarding turns on IP forwarding in the namespace; pods reach other
// nodes by being forwarded from the bridge into the WireGuard device.
func (d *dataplane) ensureForwarding(v6 bool) error {
	path := "/proc/sys/net/ipv4/ip_forward"
	if v6 {
		path = "/proc/sys/net/ipv6/conf/all/forwarding"
	}
	turnedOn, err := d.ensureSysctl(path, "1")
	if err != nil {
		return fmt.Errorf("failed to enable IP forwarding (%s): %w", path, err)
	}
	if turnedOn {
		d.log.Info("enabled IP forwarding", "sysctl", path)
	}
	return nil
}

// ensureSysctl sets the sysctl file path of the data plane's namespace to
// want unless it holds it already, and says whether it wrote it.
func (d *dataplane) ensureSysctl(path, want string) (changed bool, err error) {
	// /proc/sys/net shows the namespace of the thread that opens it.
	err = d.ns.do(func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(b)) == want {
			return nil
		}
		changed = true
		return os.WriteFile(path, []byte(want+"\n"), 0o644)
	})
	return changed, err
}

// removeStaleBridges removes bridges fastdp made under an earlier BridgeName.
func (d *dataplane) removeStaleBridges(current string) error {
	links, err := dump(d.nl.LinkList)
	if err != nil {
		return fmt.Errorf("failed to list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Alias == aliasBridge && a.Name != current {
			if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
				return fmt.Errorf("failed to remove stale bridge %q: %w", a.Name, err)
			}
			d.log.Info("removed stale bridge", "bridge", a.Name)
		}
	}
	return nil
}
