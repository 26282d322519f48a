package ipam

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestHeldOutsideOwnedAfterReclaim: a peer cut off long enough that the
// majority reclaims its space keeps its pods and its gateway (I5); every
// peer, the cut-off one included once healed, lists exactly those
// addresses as held by it outside its owned space, and nothing for the
// others, also after the heir has allocated in the reclaimed space. A
// release takes the address off the list.
func TestHeldOutsideOwnedAfterReclaim(t *testing.T) {
	s := newSimNet(5)
	names := []string{"a", "b", "c", "d", "e"}
	for _, n := range names {
		s.add(t, n, "10.0.0.0/26", 5, 20*time.Second)
	}
	s.settle(t, 10)
	for _, n := range names {
		if got := s.nodes[n].HeldOutsideOwned(); len(got) != 0 {
			t.Fatalf("%s lists %v before any fault; want nothing", n, got)
		}
	}
	var ePods []netip.Addr
	for i := range 2 {
		ePods = append(ePods, s.allocEventually(t, "e", fmt.Sprint("e-", i), 20))
	}
	gw, ok := s.nodes["e"].OverlayIP()
	if !ok {
		t.Fatal("e has no gateway")
	}
	s.rounds(5)
	s.part = map[string]int{"e": 1}
	s.rounds(50)
	for _, r := range s.nodes["a"].Ranges() {
		if r.Owner == "e" {
			t.Fatalf("e's range %v not reclaimed", r.CIDR)
		}
	}
	// The majority allocates in what it took over.
	for i := range 30 {
		n := names[i%4]
		if err := simAllocate(s.nodes[n], fmt.Sprint("m-", i)); err != nil {
			s.round()
		}
	}
	clear(s.part)
	s.settle(t, 10)
	s.checkUnique(t, 5, 0)

	want := []PeerHeld{{Peer: "e", Addrs: sortedAddrs(append(slices.Clone(ePods), gw))}}
	for _, n := range names {
		if got := s.nodes[n].HeldOutsideOwned(); !reflect.DeepEqual(got, want) {
			t.Errorf("%s lists %v, want %v", n, got, want)
		}
	}

	if err := s.nodes["e"].Release("e-0", "eth0"); err != nil {
		t.Fatal(err)
	}
	s.settle(t, 10)
	want = []PeerHeld{{Peer: "e", Addrs: sortedAddrs([]netip.Addr{ePods[1], gw})}}
	for _, n := range names {
		if got := s.nodes[n].HeldOutsideOwned(); !reflect.DeepEqual(got, want) {
			t.Errorf("after e's release, %s lists %v, want %v", n, got, want)
		}
	}
}

// TestHeldOutsideOwnedRules covers the rules one by one on a peer whose
// view is set by hand: a is the only owner of 10.0.0.0/28 and b, c hold
// addresses in it.
func TestHeldOutsideOwnedRules(t *testing.T) {
	addr := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	tests := []struct {
		name  string
		peers map[string][]uint64
		want  []PeerHeld
	}{
		{"nobody else holds anything", map[string][]uint64{}, nil},
		{"held in a's space", map[string][]uint64{"b": {5, 7}},
			[]PeerHeld{{"b", []netip.Addr{addr("10.0.0.5"), addr("10.0.0.7")}}}},
		{"one peer per entry, sorted", map[string][]uint64{"c": {9}, "b": {5}},
			[]PeerHeld{{"b", []netip.Addr{addr("10.0.0.5")}}, {"c", []netip.Addr{addr("10.0.0.9")}}}},
		{"held by two peers is left out", map[string][]uint64{"b": {5, 6}, "c": {6}},
			[]PeerHeld{{"b", []netip.Addr{addr("10.0.0.5")}}}},
		{"held by this peer's pod too is left out", map[string][]uint64{"b": {3}}, nil},
		{"listed twice by one peer counts once", map[string][]uint64{"b": {5, 5}},
			[]PeerHeld{{"b", []netip.Addr{addr("10.0.0.5")}}}},
		{"beyond the ring is ignored", map[string][]uint64{"b": {99}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, "a", "10.0.0.0/28")
			a := mustNew(t, cfg, nil)
			defer a.Close()
			if got := a.HeldOutsideOwned(); got != nil {
				t.Fatalf("before seeding: %v, want nothing", got)
			}
			a.mu.Lock()
			a.st.seed = seed{Members: 1, ID: 1}
			a.st.ring = seededRing(16, []string{"a"})
			a.allocs = map[Key]uint64{{"x", "eth0"}: 3}
			a.byOff = map[uint64]Key{3: {"x", "eth0"}}
			for name, held := range tc.peers {
				a.st.peers[name] = peerInfo{Version: 1, ID: "id-" + name, Held: held}
			}
			a.mu.Unlock()
			if got := a.HeldOutsideOwned(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestHeldOutsideOwnedIncludesOwnPods: this peer's own pods in space it
// lost are listed under its name, from its allocations.
func TestHeldOutsideOwnedIncludesOwnPods(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/28")
	a := mustNew(t, cfg, nil)
	defer a.Close()
	a.mu.Lock()
	a.st.seed = seed{Members: 2, ID: 1}
	a.st.ring = seededRing(16, []string{"a", "b"}) // a: 0-7, b: 8-15
	a.allocs = map[Key]uint64{{"x", "eth0"}: 3, {"y", "eth0"}: 10}
	a.byOff = map[uint64]Key{3: {"x", "eth0"}, 10: {"y", "eth0"}}
	a.mu.Unlock()
	want := []PeerHeld{{"a", []netip.Addr{netip.MustParseAddr("10.0.0.10")}}}
	if got := a.HeldOutsideOwned(); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func sortedAddrs(as []netip.Addr) []netip.Addr {
	out := slices.Clone(as)
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// routingMismatch checks, once the simulation has settled, that every
// node's view routes every live pod's address (and the gateway of every
// node with pods) to the node that holds it, as the data plane does: to
// the holder HeldOutsideOwned names, else to the ring's owner.
func (s *simNet) routingMismatch() string {
	names := slices.Sorted(maps.Keys(s.nodes))
	for _, viewer := range names {
		a := s.nodes[viewer].Allocator
		routes := map[netip.Addr]string{}
		for _, h := range a.HeldOutsideOwned() {
			for _, x := range h.Addrs {
				routes[x] = h.Peer
			}
		}
		ranges := a.Ranges()
		routeOf := func(x netip.Addr) string {
			if h, ok := routes[x]; ok {
				return h
			}
			for _, r := range ranges {
				if r.CIDR.Contains(x) {
					return r.Owner
				}
			}
			return ""
		}
		for _, name := range names {
			n := s.nodes[name]
			addrs := slices.Collect(maps.Values(n.pods))
			if gw, ok := n.OverlayIP(); ok && len(addrs) > 0 {
				addrs = append(addrs, gw)
			}
			for _, x := range sortedAddrs(addrs) {
				if got := routeOf(x); got != name {
					return fmt.Sprintf("%s routes %s's address %v to %q", viewer, name, x, got)
				}
			}
		}
	}
	return ""
}
