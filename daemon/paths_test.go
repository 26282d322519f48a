package daemon

import (
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/coord"
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
		{Name: "b", State: api.MemberAlive, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{Down: []string{"a"}, Probe: "10.36.0.1", Coord: []int{250, 0, 0, 1, 300}})},
		{Name: "c", State: api.MemberSuspect, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{NoRelay: true, Preference: 3, Coord: []int{0, 0, 0, 0, 300}})},
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
	// b's coordinate reads back; c's (height 0) is out of bounds: none.
	bc, _ := coord.FromWire([]int{250, 0, 0, 1, 300})
	want[1].Coord = &bc
	if !slices.EqualFunc(got, want, func(a, b peer.PathReport) bool {
		return a.Name == b.Name && a.Live == b.Live && a.Known == b.Known && a.NoRelay == b.NoRelay && a.Preference == b.Preference && slices.Equal(a.Down, b.Down) &&
			(a.Coord == nil) == (b.Coord == nil) && (a.Coord == nil || *a.Coord == *b.Coord)
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

// TestDataEndpoint: a node behind NAT is sent to at its public address and
// the port it announces (its WireGuard port when none), except by a node
// behind the same NAT; a public address that is no unicast address a data
// plane could send to is ignored, and so is a port without an address or
// out of range.
func TestDataEndpoint(t *testing.T) {
	adv := netip.MustParseAddrPort("10.9.0.11:6783")
	member := func(public string, port int) mesh.Member {
		return mesh.Member{Name: "b", Addr: adv, Meta: mesh.Meta{PublicAddr: public, PublicPort: port, DPPort: 6784}}
	}
	pub := netip.MustParseAddr("192.0.2.253")
	for _, tc := range []struct {
		name       string
		public     string
		port       int
		selfPublic netip.Addr
		want       netip.Addr
		wantPort   int
	}{
		{"not behind NAT", "", 0, netip.Addr{}, adv.Addr(), 6784},
		{"behind NAT", "192.0.2.253", 0, netip.Addr{}, pub, 6784},
		{"behind NAT that maps the port", "192.0.2.253", 40784, netip.Addr{}, pub, 40784},
		{"a port without an address", "", 40784, netip.Addr{}, adv.Addr(), 6784},
		{"a port out of range", "192.0.2.253", 70000, netip.Addr{}, pub, 6784},
		{"a negative port", "192.0.2.253", -1, netip.Addr{}, pub, 6784},
		{"behind another NAT", "192.0.2.253", 40784, netip.MustParseAddr("192.0.2.252"), pub, 40784},
		{"behind the same NAT", "192.0.2.253", 40784, pub, adv.Addr(), 6784},
		{"IPv4-mapped", "::ffff:192.0.2.253", 0, netip.Addr{}, pub, 6784},
		{"garbage", "not an address", 40784, netip.Addr{}, adv.Addr(), 6784},
		{"loopback", "127.0.0.1", 0, netip.Addr{}, adv.Addr(), 6784},
		{"unspecified", "::", 0, netip.Addr{}, adv.Addr(), 6784},
		{"multicast", "224.0.0.1", 0, netip.Addr{}, adv.Addr(), 6784},
		{"link-local", "fe80::1", 0, netip.Addr{}, adv.Addr(), 6784},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, port := dataEndpoint(member(tc.public, tc.port), tc.selfPublic); got != tc.want || port != tc.wantPort {
				t.Fatalf("dataEndpoint = %v, %d, want %v, %d", got, port, tc.want, tc.wantPort)
			}
		})
	}
}

// The coordinate moves with the probes' round trips against the
// coordinates peers publish (none from a peer that publishes none, or one
// out of bounds), and what this node publishes follows it only past the
// republish bounds.
func TestPublishedCoordinate(t *testing.T) {
	d := &Daemon{id: identity.Identity{Name: "a"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d.coords = coord.New(coord.DefaultConfig(), "a")
	start := time.Now()
	d.coordPub, d.coordPubAt = d.coords.Get().Wire(), start // as openProber
	if got := d.publishedCoord(start, 3); !slices.Equal(got, coord.Origin().Wire()) {
		t.Fatalf("first published %v, want the origin", got)
	}
	far := coord.Origin()
	far.Vec[0], far.Error = 80, 0.05
	members := []mesh.Member{
		{Name: "a", Self: true, State: api.MemberAlive},
		{Name: "b", State: api.MemberAlive, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{Coord: far.Wire()})},
		{Name: "c", State: api.MemberAlive, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{})},
		{Name: "e", State: api.MemberAlive, Meta: (mesh.Meta{}).WithPaths(mesh.PathMeta{Coord: []int{1 << 40, 0, 0, 1, 10}})},
	}
	// Samples from peers without a usable coordinate change nothing.
	d.sampleLatency(members, map[string]time.Duration{"c": 40 * time.Millisecond, "e": 40 * time.Millisecond})
	if d.coords.Get() != coord.Origin() {
		t.Fatalf("samples without a usable coordinate moved it: %+v", d.coords.Get())
	}
	// b is 80 ms away but answers within 1 ms: the coordinate moves
	// towards it.
	for range 30 {
		d.sampleLatency(members, map[string]time.Duration{"b": time.Millisecond})
	}
	if dist := coord.Distance(d.coords.Get(), far); dist > 40 {
		t.Fatalf("after 30 samples of 1 ms, still %.1f ms from b", dist)
	}
	if got := d.publishedCoord(start.Add(peer.CoordRepublishEvery/2), 3); !slices.Equal(got, coord.Origin().Wire()) {
		t.Fatalf("republished %v before %v", got, peer.CoordRepublishEvery)
	}
	later := start.Add(peer.CoordRepublishEvery)
	// In a mesh of 100, not yet: the interval grows with the members.
	if big := d.publishedCoord(later, 100); !slices.Equal(big, coord.Origin().Wire()) {
		t.Fatalf("republished %v after %v in a mesh of 100, want not before %v", big, peer.CoordRepublishEvery, peer.CoordRepublishInterval(100))
	}
	got := d.publishedCoord(later, 3)
	if slices.Equal(got, coord.Origin().Wire()) || !slices.Equal(got, d.coords.Get().Wire()) {
		t.Fatalf("published %v after %v, want the current %v", got, peer.CoordRepublishEvery, d.coords.Get().Wire())
	}
	// A move below the bound is not republished, however late.
	moved := d.coords.Get()
	d.sampleLatency(members, map[string]time.Duration{"b": time.Millisecond})
	if m := coord.Moved(moved, d.coords.Get()); m >= float64(peer.CoordRepublishMove/time.Millisecond) {
		t.Fatalf("one more sample moved it %.1f ms; the test needs a smaller move", m)
	}
	if again := d.publishedCoord(later.Add(time.Hour), 3); !slices.Equal(again, got) {
		t.Fatalf("a small move was republished: %v, was %v", again, got)
	}
}

// Status shows a member's announced public address only when it parses:
// a member cannot put text of its choice into the others' status.
func TestPublicAddressInStatus(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"198.51.100.7", "198.51.100.7"},
		{"2001:db8::7", "2001:db8::7"},
		{"", ""},
		{"198.51.100.7:6784", ""},
		{"run `mesh rmpeer host2` now", ""},
	} {
		if got := publicAddress(mesh.Meta{PublicAddr: tc.in}); got != tc.want {
			t.Errorf("publicAddress(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Status shows an announced port only with a public address it belongs to
// and in range (dataEndpoint's rule).
func TestPublicPortInStatus(t *testing.T) {
	for _, tc := range []struct {
		addr string
		port int
		want int
	}{
		{"198.51.100.7", 40784, 40784},
		{"198.51.100.7", 0, 0},
		{"", 40784, 0},
		{"not an address", 40784, 0},
		{"198.51.100.7", 65536, 0},
		{"198.51.100.7", -5, 0},
	} {
		if got := publicPort(mesh.Meta{PublicAddr: tc.addr, PublicPort: tc.port}); got != tc.want {
			t.Errorf("publicPort(%q, %d) = %d, want %d", tc.addr, tc.port, got, tc.want)
		}
	}
}
