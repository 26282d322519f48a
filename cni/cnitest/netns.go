package cnitest

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Host is a throwaway "node" netns wired as fastdp wires a node: a bridge
// holding the gateway as a host prefix and the owned range routed to it.
type Host struct {
	NS     string
	Bridge string
	h      *netlink.Handle
}

// NewHost creates a host netns for d and points d's allocations at its
// bridge, named "mtest" and random hex.
func NewHost(t testing.TB, d *FakeDaemon) *Host {
	t.Helper()
	ns := netnstest.New(t)
	h := netnstest.Handle(t, ns)
	var b [4]byte
	rand.Read(b[:])
	name := "mtest" + hex.EncodeToString(b[:])
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: DefaultMTU}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("failed to create bridge %q: %v", name, err)
	}
	gw := netip.PrefixFrom(d.Gateway, d.Gateway.BitLen())
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gw)}); err != nil {
		t.Fatalf("failed to add %s to bridge %q: %v", gw, name, err)
	}
	if d.Gateway6.IsValid() {
		// As fastdp: the IPv6 gateway too, usable at once.
		gw6 := netip.PrefixFrom(d.Gateway6, d.Gateway6.BitLen())
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gw6), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("failed to add %s to bridge %q: %v", gw6, name, err)
		}
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatalf("failed to set bridge %q up: %v", name, err)
	}
	r := &netlink.Route{LinkIndex: br.Attrs().Index, Dst: ipNet(d.Owned), Src: net.IP(d.Gateway.AsSlice()), Scope: netlink.SCOPE_LINK}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("failed to route %s to bridge %q: %v", d.Owned, name, err)
	}
	if d.Gateway6.IsValid() {
		r := &netlink.Route{LinkIndex: br.Attrs().Index, Dst: ipNet(d.Owned6), Src: net.IP(d.Gateway6.AsSlice()), Scope: netlink.SCOPE_LINK}
		if err := h.RouteAdd(r); err != nil {
			t.Fatalf("failed to route %s to bridge %q: %v", d.Owned6, name, err)
		}
	}
	d.SetBridge(name)
	return &Host{NS: ns, Bridge: name, h: h}
}

// Links returns the names of the links in the host netns.
func (h *Host) Links(t testing.TB) []string {
	t.Helper()
	links, err := h.h.LinkList()
	if err != nil {
		t.Fatalf("failed to list links of %q: %v", h.NS, err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// Link returns the link named name in the host netns, or nil.
func (h *Host) Link(name string) netlink.Link {
	l, err := h.h.LinkByName(name)
	if err != nil {
		return nil
	}
	return l
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
