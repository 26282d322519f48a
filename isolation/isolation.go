// Package isolation keeps pods from talking past the policy and the
// encryption: at layer 2 on the node's bridge, each pod port admits only
// that pod's own MAC and IPv4 address (IPv4 source, ARP sender), nothing of
// IPv6 and no host-configuring traffic (DHCP server replies); at layer 3,
// packets with a cluster-range source are accepted only from the bridge and
// the WireGuard device. Two nftables tables of its own hold the rules,
// `bridge mesh-isolation` and `inet mesh-isolation`, replaced together in
// one transaction; nothing else is touched.
package isolation

import (
	"bytes"
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// TableName names both tables (families bridge and inet).
const TableName = "mesh-isolation"

// Counter names: what was dropped, and why.
const (
	// CounterSpoofed: a frame from a pod port whose MAC, IPv4 source or ARP
	// sender is not that pod's own.
	CounterSpoofed = "spoofed"
	// CounterIPv6: IPv6 from a pod that no rule admits: all of it in an
	// IPv4-only mesh; in a dual-stack one router advertisements and
	// solicitations, redirects, MLD and link-local traffic other than
	// neighbour solicitations.
	CounterIPv6 = "ipv6"
	// CounterHostConfig: host-configuring traffic from a pod (DHCP server
	// replies).
	CounterHostConfig = "host-config"
	// CounterOther: any other protocol from a pod (VLAN tags, ...).
	CounterOther = "other"
	// CounterPodToPod: a frame a pod addressed straight to another pod's
	// MAC, which would be bridged past the host's routing and so past
	// NetworkPolicy.
	CounterPodToPod = "pod-to-pod"
	// CounterUnderlay: a packet with a cluster-range source that arrived
	// neither from a pod (the bridge) nor from the WireGuard device.
	CounterUnderlay = "underlay-spoofed"
)

// Counters lists every counter, bridge table first.
var Counters = []string{CounterSpoofed, CounterIPv6, CounterHostConfig, CounterOther, CounterPodToPod, CounterUnderlay}

// Port is one pod's port on the bridge and what it may send from.
type Port struct {
	Name string // the host-side veth
	MAC  net.HardwareAddr
	Addr netip.Addr // IPv4; the zero value for an IPv6-only pod
	// Addr6 is the pod's IPv6 address in a dual-stack or IPv6-only mesh
	// (Config's ClusterRange6 set); the zero value for none.
	Addr6 netip.Addr
	// Legacy marks a pod wired before port isolation: it and its peers on
	// the node may have learnt (from ICMP redirects of the host, which the
	// previous release sent) to reach each other straight by MAC, so
	// frames from and to its port are bridged as before, until it is
	// recreated.
	Legacy bool
}

// Config is the desired content of the tables.
type Config struct {
	// Bridge is the pods' bridge.
	Bridge string
	// PortPrefix starts the name of every pod port (mesh-cni's host-side
	// veths): frames entering such a port are checked.
	PortPrefix string
	// Trusted are the interfaces cluster-range sources may arrive on besides
	// the bridge: the WireGuard device (and lo, always).
	Trusted []string
	// ClusterRange is the overlay range; invalid leaves layer 3 unchecked.
	ClusterRange netip.Prefix
	// ClusterRange6 is the IPv6 overlay range of a dual-stack mesh. When
	// set, a pod port also admits IPv6 from the pod's MAC and Addr6, and
	// the neighbour discovery that needs (see bridgeRules); router
	// advertisements, redirects and spoofed sources stay dropped. The
	// zero value drops all IPv6 from pods, as in an IPv4-only mesh.
	ClusterRange6 netip.Prefix
	// Ports are the pods' ports.
	Ports []Port
}

// normalize sorts and deduplicates, so equal configs compare equal. A
// config already normalized (every applied one) is returned as it is,
// sharing its slices, after one pass over them.
func (c Config) normalize() Config {
	byName := func(a, b Port) int { return strings.Compare(a.Name, b.Name) }
	if slices.IsSortedFunc(c.Ports, func(a, b Port) int { return cmp.Or(byName(a, b), -1) }) &&
		slices.IsSortedFunc(c.Trusted, func(a, b string) int { return cmp.Or(strings.Compare(a, b), -1) }) {
		return c // sorted, and no name twice
	}
	out := c
	out.Trusted = slices.Clone(c.Trusted)
	slices.Sort(out.Trusted)
	out.Trusted = slices.Compact(out.Trusted)
	out.Ports = slices.Clone(c.Ports)
	slices.SortFunc(out.Ports, byName)
	out.Ports = slices.CompactFunc(out.Ports, func(a, b Port) bool { return a.Name == b.Name })
	return out
}

// Equal reports whether c and o describe the same tables, as String would
// render them, without rendering either: every allocation compares the
// tables it wants with those applied, and formatting both took most of an
// Allocate on a node with many pods.
func (c Config) Equal(o Config) bool {
	c, o = c.normalize(), o.normalize()
	return c.Bridge == o.Bridge && c.PortPrefix == o.PortPrefix &&
		c.ClusterRange == o.ClusterRange && c.ClusterRange6 == o.ClusterRange6 &&
		slices.Equal(c.Trusted, o.Trusted) && slices.EqualFunc(c.Ports, o.Ports, Port.equal)
}

func (p Port) equal(o Port) bool {
	return p.Name == o.Name && bytes.Equal(p.MAC, o.MAC) && p.Addr == o.Addr && p.Addr6 == o.Addr6 && p.Legacy == o.Legacy
}

// Validate reports the first entry the tables cannot hold.
func (c Config) Validate() error {
	if c.Bridge == "" || len(c.Bridge) > 15 {
		return fmt.Errorf("invalid bridge name %q", c.Bridge)
	}
	if c.PortPrefix == "" || len(c.PortPrefix) > 15 {
		return fmt.Errorf("invalid port prefix %q", c.PortPrefix)
	}
	for _, t := range c.Trusted {
		if t == "" || len(t) > 15 {
			return fmt.Errorf("invalid trusted interface name %q", t)
		}
	}
	if c.ClusterRange.IsValid() && !c.ClusterRange.Addr().Is4() {
		return fmt.Errorf("cluster range %s is not IPv4", c.ClusterRange)
	}
	if r := c.ClusterRange6; r.IsValid() && (!r.Addr().Is6() || r.Addr().Is4In6() || r != r.Masked()) {
		return fmt.Errorf("IPv6 cluster range %s is not a masked IPv6 prefix", r)
	}
	for _, p := range c.Ports {
		if p.Name == "" || len(p.Name) > 15 {
			return fmt.Errorf("invalid port name %q", p.Name)
		}
		if len(p.MAC) != 6 {
			return fmt.Errorf("port %s: invalid MAC %q", p.Name, p.MAC)
		}
		if !p.Addr.Is4() && !(p.Addr == netip.Addr{} && p.Addr6.IsValid()) {
			return fmt.Errorf("port %s: address %s is not IPv4", p.Name, p.Addr)
		}
		if p.Addr6.IsValid() && (!c.ClusterRange6.IsValid() || !c.ClusterRange6.Contains(p.Addr6)) {
			return fmt.Errorf("port %s: IPv6 address %s is outside the IPv6 cluster range %q", p.Name, p.Addr6, c.ClusterRange6)
		}
	}
	return nil
}

// MACFor is the MAC a pod with address a gets: 0a:58 (locally
// administered, unicast) followed by the IPv4 address. The daemon knows it
// when it allocates the address, before the veth exists, so the port's
// entry is in place before the pod's first frame; and an address always
// maps to the same MAC, so neighbour caches stay right when an address is
// reused.
func MACFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x0a, 0x58, b[0], b[1], b[2], b[3]}
}

// PodMAC is the MAC of a pod with IPv4 address v4 and IPv6 address v6
// (either may be the zero address): MACFor(v4) when it has IPv4, as ever,
// so a dual-stack pod keeps the MAC it would have in an IPv4-only mesh;
// MACFor6(v6) for an IPv6-only pod; nil with neither.
func PodMAC(v4, v6 netip.Addr) net.HardwareAddr {
	switch {
	case v4.Is4():
		return MACFor(v4)
	case v6.Is6():
		return MACFor6(v6)
	}
	return nil
}

// MACFor6 is the MAC of a pod that has only an IPv6 address: 0a:59
// (locally administered, unicast, apart from MACFor's 0a:58) followed by
// the address's last four bytes. Those bytes are what the IPAM hands out
// within a node's block, so pods of one node (one bridge) get distinct
// MACs.
func MACFor6(a netip.Addr) net.HardwareAddr {
	b := a.As16()
	return net.HardwareAddr{0x0a, 0x59, b[12], b[13], b[14], b[15]}
}

// String renders the desired tables in nft syntax, for logs and tests.
func (c Config) String() string {
	c = c.normalize()
	var b strings.Builder
	fmt.Fprintf(&b, "table bridge %s: bridge %s ports %s*\n", TableName, c.Bridge, c.PortPrefix)
	for _, p := range c.Ports {
		if p.Addr.IsValid() {
			fmt.Fprintf(&b, "  port %s . %s . %s legacy=%v\n", p.Name, p.MAC, p.Addr, p.Legacy)
		}
		if p.Addr6.IsValid() {
			fmt.Fprintf(&b, "  port %s . %s . %s\n", p.Name, p.MAC, p.Addr6)
		}
	}
	fmt.Fprintf(&b, "table inet %s: cluster %s from %s lo\n", TableName, c.ClusterRange, strings.Join(c.Trusted, " "))
	if c.ClusterRange6.IsValid() {
		fmt.Fprintf(&b, "table inet %s: cluster6 %s from %s lo\n", TableName, c.ClusterRange6, strings.Join(c.Trusted, " "))
	}
	return b.String()
}
