package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/meshnet/mesh/cni"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/isolation"
)

// isolationCheck is how often the isolation tables are compared with the
// live ruleset (and restored if something changed them).
const isolationCheck = 2 * time.Second

// startIsolation programs the port-isolation tables from the allocations
// of this node and keeps them in step. It needs the bridge, so it runs only
// with a data plane.
func (d *Daemon) startIsolation() {
	if !d.cfg.hasDataplane() {
		return
	}
	if d.cfg.NoPortIsolation {
		if err := isolation.New().Remove(); err != nil {
			d.log.Warn("failed to remove the port-isolation tables", "error", err)
		}
		d.log.Warn("port isolation is off (--no-port-isolation): pods can spoof addresses on this node's bridge")
		return
	}
	d.iso = isolation.New()
	d.adoptLegacyPorts()
	if err := d.syncIsolation(); err != nil {
		d.log.Error("failed to program the port-isolation tables; retrying", "error", err)
	}
	d.goEvery("isolation", isolationCheck, func(context.Context) {
		if err := d.syncIsolation(); err != nil {
			d.log.Error("failed to program the port-isolation tables; retrying", "error", err)
		}
	})
}

// isolationConfig is the desired content of the tables: a port per
// allocation of this node.
func (d *Daemon) isolationConfig() isolation.Config {
	cfg := isolation.Config{Bridge: d.cfg.Bridge, PortPrefix: cni.HostVethPrefix, Trusted: []string{d.cfg.WGDevice, d.cfg.innerDevice()}, ClusterRange: d.cfg.ipv4Range(),
		ClusterRange6: d.cfg.ipv6Range()}
	v6 := map[ipam.Key]netip.Addr{}
	if d.ipam6 != nil {
		for _, a := range d.ipam6.List() {
			v6[ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}] = a.Addr
		}
	}
	// This runs at every allocation and allocated most of what the
	// daemon's garbage collector swept under a flood of IPAM states: the
	// ports are made once to size and sorted in place, and the names seen
	// are kept only while there are legacy MACs to forget.
	list := d.ipam.List()
	cfg.Ports = make([]isolation.Port, 0, len(list))
	var seen map[string]bool
	if len(d.legacyMACs) > 0 {
		seen = make(map[string]bool, len(d.legacyMACs))
	}
	for _, a := range list {
		name := cni.HostVethName(a.ContainerID, a.IfName)
		var port isolation.Port
		switch {
		case a.Addr.Is4():
			// A dual-stack pod's IPv6 address is admitted with its
			// (IPv4-derived) MAC; an IPv6 allocation without an IPv4
			// one (left by a failed ADD) has no pod, and no port.
			port = isolation.Port{Name: name, MAC: isolation.MACFor(a.Addr), Addr: a.Addr, Addr6: v6[ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}]}
		case d.cfg.ipv6Only():
			port = isolation.Port{Name: name, MAC: isolation.MACFor6(a.Addr), Addr6: a.Addr}
		default:
			continue
		}
		if m, ok := d.legacyMACs[name]; ok {
			port.MAC, port.Legacy = m, true
			seen[name] = true
		}
		cfg.Ports = append(cfg.Ports, port)
	}
	for name := range d.legacyMACs {
		if !seen[name] {
			delete(d.legacyMACs, name) // released: the next pod gets the fixed MAC
		}
	}
	// In the tables' order: comparing and updating then take one pass.
	slices.SortFunc(cfg.Ports, func(a, b isolation.Port) int { return strings.Compare(a.Name, b.Name) })
	return cfg
}

// adoptLegacyPorts finds the pods wired before port isolation (by a
// previous release, whose plugin left the MAC random) and admits their
// actual MAC on their port instead of the fixed one, and their frames to
// other pods' ports (see isolation.Port.Legacy), so an upgrade does not cut
// them off. It reads the MAC of the pod's end of each veth once, at start;
// new pods always get the fixed MAC. Such pods should be recreated (drain
// the node) to lose these exceptions.
func (d *Daemon) adoptLegacyPorts() {
	d.legacyMACs = map[string]net.HardwareAddr{}
	for _, a := range d.ipam.List() {
		if !a.Addr.Is4() {
			continue
		}
		name := cni.HostVethName(a.ContainerID, a.IfName)
		mac, err := podMAC(name)
		if err != nil {
			d.log.Debug("cannot read the pod's MAC of a port", "port", name, "error", err)
			continue
		}
		if mac.String() != isolation.MACFor(a.Addr).String() {
			d.legacyMACs[name] = mac
			d.log.Warn("pod wired before port isolation: admitting its current MAC; recreate it to get the fixed one", "port", name, "address", a.Addr, "mac", mac)
		}
	}
}

// podMAC returns the MAC of the other end of the host veth named port, in
// the pod's network namespace (through the netns id the kernel gives it).
func podMAC(port string) (net.HardwareAddr, error) {
	link, err := netlink.LinkByName(port)
	if err != nil {
		return nil, err
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return nil, fmt.Errorf("%s is not a veth", port)
	}
	attrs := link.Attrs()
	if attrs.NetNsID < 0 || attrs.ParentIndex == 0 {
		return nil, fmt.Errorf("the peer of %s is in no other network namespace", port)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(attrs.ParentIndex)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(attrs.NetNsID))))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, fmt.Errorf("failed to look up the peer of %s: %w", port, err)
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("looking up the peer of %s gave %d answers", port, len(msgs))
	}
	peer, err := netlink.LinkDeserialize(nil, msgs[0])
	if err != nil {
		return nil, err
	}
	if mac := peer.Attrs().HardwareAddr; len(mac) == 6 {
		return mac, nil
	}
	return nil, fmt.Errorf("the peer of %s has no Ethernet address", port)
}

// syncIsolation applies the tables if the allocations changed or if the
// live tables differ from what was applied (a flushed ruleset); the latter
// is counted and logged. No-op without isolation.
func (d *Daemon) syncIsolation() (err error) {
	if d.iso == nil {
		return nil
	}
	d.isoMu.Lock()
	defer d.isoMu.Unlock()
	defer func() { d.isoErr.set(err) }()
	want := d.isolationConfig()
	prev, applied := d.iso.Applied()
	same := applied && prev.Equal(want)
	if same {
		ok, err := d.iso.Intact()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		d.isoRestores.Add(1)
		d.log.Warn("the port-isolation tables were changed or deleted outside mesh; restoring them", "table", isolation.TableName)
	}
	if !applied || same {
		// First time, or restoring: the whole tables.
		if err := d.iso.Apply(want); err != nil {
			return fmt.Errorf("failed to apply the port-isolation tables: %w", err)
		}
		return nil
	}
	if err := d.iso.Update(want); err != nil {
		return fmt.Errorf("failed to update the port-isolation tables: %w", err)
	}
	return nil
}

// flushConntrack deletes the connection-tracking entries of a released
// address: established flows must not reach the next pod that gets it.
func (d *Daemon) flushConntrack(addr netip.Addr) {
	if !d.cfg.hasDataplane() || !addr.IsValid() {
		return
	}
	ip := net.IP(addr.AsSlice())
	var filters []netlink.CustomConntrackFilter
	for _, k := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP, netlink.ConntrackReplyAnyIP} {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIP(k, ip); err != nil {
			d.log.Warn("failed to build a conntrack filter", "address", addr, "error", err)
			return
		}
		filters = append(filters, f)
	}
	family := netlink.InetFamily(unix.AF_INET)
	if addr.Is6() {
		family = unix.AF_INET6 // a dual-stack pod's IPv6 address
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
	if err != nil {
		d.log.Warn("failed to flush the conntrack entries of a released address", "address", addr, "error", err)
		return
	}
	if n > 0 {
		d.log.Debug("flushed conntrack entries of a released address", "address", addr, "entries", n)
	}
}

// isolationCounters reads the tables' drop counters; nil without isolation.
func (d *Daemon) isolationCounters() map[string]uint64 {
	if d.iso == nil {
		return nil
	}
	c, err := d.iso.Counters()
	if err != nil {
		d.log.Warn("failed to read the port-isolation counters", "error", err)
		return nil
	}
	return c
}
