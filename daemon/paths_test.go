package daemon

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// The relay choice reads gossip's path reports: a member without one (the
// previous release) or with an overflowing one is unknown, this node's own
// report is what it publishes rather than gossip's echo of it, and only
// live members relay.
func TestPathReports(t *testing.T) {
	d := &Daemon{id: identity.Identity{Name: "a"}}
	d.self.meta = d.self.meta.WithPaths(mesh.PathMeta{Down: []string{"b"}})
	members := []mesh.Member{
		{Name: "a", Self: true, State: api.MemberAlive}, // gossip has not echoed a's report yet
		{Name: "b", State: api.MemberAlive, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{Down: []string{"a"}, Probe: "10.36.0.1"})},
		{Name: "c", State: api.MemberSuspect, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{NoRelay: true, Preference: 3})},
		{Name: "d", State: api.MemberAlive},
		{Name: "e", State: api.MemberAlive, Meta: mesh.Meta{Paths: &mesh.PathMeta{Version: mesh.PathMetaVersion, Overflow: true}}},
		{Name: "f", State: api.MemberDead, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{})},
	}
	got := d.pathReports(members)
	want := []peer.PathReport{
		{Name: "a", Live: true, Known: true, Down: []string{"b"}},
		{Name: "b", Live: true, Known: true, Down: []string{"a"}},
		{Name: "c", Live: true, Known: true, NoRelay: true, Preference: 3},
		{Name: "d", Live: true},
		{Name: "e", Live: true},
		{Name: "f", Known: true},
	}
	if !slices.EqualFunc(got, want, func(a, b peer.PathReport) bool {
		return a.Name == b.Name && a.Live == b.Live && a.Known == b.Known && a.NoRelay == b.NoRelay && a.Preference == b.Preference && slices.Equal(a.Down, b.Down)
	}) {
		t.Fatalf("pathReports =\n%+v\nwant\n%+v", got, want)
	}
	// c runs --no-relay, d and e are unknown, f is dead: no relay for b.
	if via := peer.Relays("a", got); len(via) != 0 {
		t.Fatalf("Relays = %v, want none", via)
	}
	if _, ok := probeAddr(members[3].Meta, netip.MustParsePrefix("10.32.0.0/12")); ok {
		t.Fatal("a member without a report has a probe address")
	}
}

// A probe address is used only inside the probe range, so only of its
// family: IPv4 in an IPv4-only or dual-stack mesh, IPv6 in an IPv6-only one.
func TestProbeAddr(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.32.0.0/12"), netip.MustParsePrefix("fd33::/48")
	tests := []struct {
		name    string
		cluster netip.Prefix
		probe   string
		ok      bool
	}{
		{"IPv4 in the range", v4, "10.36.0.1", true},
		{"IPv4 outside the range", v4, "192.0.2.1", false},
		{"IPv6 in an IPv4 mesh", v4, "fd33::1", false},
		{"IPv4-mapped IPv6", v4, "::ffff:10.36.0.1", false},
		{"IPv6 in the range", v6, "fd33::8000:0:1", true},
		{"IPv6 outside the range", v6, "fd34::1", false},
		{"IPv4 in an IPv6-only mesh", v6, "10.36.0.1", false},
		{"zoned", v6, "fd33::1%eth0", false},
		{"not an address", v6, "fd33::/64", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok := probeAddr((mesh.Meta{}).WithPaths(mesh.PathMeta{Probe: tt.probe}), tt.cluster)
			if ok != tt.ok || (ok && a.String() != tt.probe) {
				t.Fatalf("probeAddr(%q, %s) = %v, %v; want ok %v", tt.probe, tt.cluster, a, ok, tt.ok)
			}
		})
	}
}

// TestDataAddr: a node behind NAT is sent to at its public address,
// except by a node behind the same NAT; a public address that is no
// unicast address a data plane could send to is ignored.
func TestDataAddr(t *testing.T) {
	adv := netip.MustParseAddrPort("10.9.0.11:6783")
	member := func(public string) mesh.Member {
		return mesh.Member{Name: "b", Addr: adv, Meta: mesh.Meta{PublicAddr: public}}
	}
	pub := netip.MustParseAddr("192.0.2.253")
	for _, tc := range []struct {
		name       string
		public     string
		selfPublic netip.Addr
		want       netip.Addr
	}{
		{"not behind NAT", "", netip.Addr{}, adv.Addr()},
		{"behind NAT", "192.0.2.253", netip.Addr{}, pub},
		{"behind another NAT", "192.0.2.253", netip.MustParseAddr("192.0.2.252"), pub},
		{"behind the same NAT", "192.0.2.253", pub, adv.Addr()},
		{"IPv4-mapped", "::ffff:192.0.2.253", netip.Addr{}, pub},
		{"garbage", "not an address", netip.Addr{}, adv.Addr()},
		{"loopback", "127.0.0.1", netip.Addr{}, adv.Addr()},
		{"unspecified", "::", netip.Addr{}, adv.Addr()},
		{"multicast", "224.0.0.1", netip.Addr{}, adv.Addr()},
		{"link-local", "fe80::1", netip.Addr{}, adv.Addr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dataAddr(member(tc.public), tc.selfPublic); got != tc.want {
				t.Fatalf("dataAddr = %v, want %v", got, tc.want)
			}
		})
	}
}
