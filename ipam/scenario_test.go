package ipam

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func (s *simNet) rounds(n int) {
	for range n {
		s.round()
	}
}

// allocEventually retries an allocation for up to max rounds (the lease pool
// may need an echo round first).
func (s *simNet) allocEventually(t *testing.T, name, id string, max int) netip.Addr {
	t.Helper()
	for range max {
		if err := simAllocate(s.nodes[name], id); err == nil {
			return s.nodes[name].pods[Key{id, "eth0"}]
		}
		s.round()
	}
	t.Fatalf("%s could not allocate %s in %d rounds: %+v", name, id, max, s.nodes[name].Status())
	return netip.Addr{}
}

func TestBootstrapNeedsMajority(t *testing.T) {
	s := newSimNet(3)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		s.add(t, n, "10.0.0.0/24", 5, 0)
	}
	s.part = map[string]int{"a": 1, "b": 1, "c": 2, "d": 2, "e": 2}
	s.rounds(40)
	for n, want := range map[string]string{"a": "waiting", "b": "waiting", "c": "ready", "d": "ready", "e": "ready"} {
		if got := s.nodes[n].Status().Status; got != want {
			t.Errorf("%s is %s, want %s", n, got, want)
		}
	}
	// The first split, as the majority made it: only c, d and e are in it.
	seedC := s.nodes["c"].Status().Seed
	if !strings.HasSuffix(seedC, "/3") {
		t.Errorf("majority seeded %q, want a first split among 3 peers", seedC)
	}
	for _, r := range s.nodes["c"].Ranges() {
		if !strings.Contains("cde", r.Owner) {
			t.Errorf("%v owned by %s: only the majority side should have been in the first split", r.CIDR, r.Owner)
		}
	}
	clear(s.part)
	s.settle(t, 5)
	s.rounds(10)
	// The minority side adopted the majority's ring; it was not part of the
	// first split (every range it has now was donated to it later, so its
	// entries are past version 1), and it asked for space as soon as it
	// learnt the ring, before any pod did.
	for _, n := range []string{"a", "b"} {
		nd := s.nodes[n]
		if got := nd.Status().Seed; got != seedC {
			t.Errorf("%s has seed %q, want the majority's %q", n, got, seedC)
		}
		if _, ok := nd.OverlayIP(); !ok {
			t.Errorf("%s has no overlay address after rejoining: %+v", n, nd.Status())
		}
		nd.mu.Lock()
		for _, sg := range nd.st.ring.segs {
			if (sg.e.Owner == "a" || sg.e.Owner == "b") && sg.e.Version < 2 {
				t.Errorf("%s's view: %+v at offset %d is part of the first split", n, sg.e, sg.start)
			}
		}
		nd.mu.Unlock()
	}
	// The minority side allocates like anyone.
	s.allocEventually(t, "a", "pod-a", 10)
}

func TestIndependentSeedingMerges(t *testing.T) {
	s := newSimNet(4)
	for _, n := range []string{"a", "b", "c", "d"} {
		s.add(t, n, "10.0.0.0/24", 2, 0)
	}
	s.part = map[string]int{"a": 1, "b": 1, "c": 2, "d": 2}
	s.rounds(30)
	for _, n := range []string{"a", "c"} {
		for i := range 3 {
			s.allocEventually(t, n, fmt.Sprintf("%s-%d", n, i), 5)
		}
	}
	before := map[netip.Addr][]string{}
	for _, n := range []string{"a", "c"} {
		for k, addr := range s.nodes[n].pods {
			before[addr] = append(before[addr], k.ContainerID)
		}
	}
	clear(s.part)
	s.settle(t, 10)
	st := s.nodes["b"].Status()
	if !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "seeded independently") }) {
		t.Errorf("no seeding problem reported: %q", st.Problems)
	}
	dups := 0
	for _, ids := range before {
		if len(ids) > 1 {
			dups++
		}
	}
	// Both sides also chose the same first usable address as a gateway,
	// and a gateway never moves while pods use it: a and c (with pods)
	// keep theirs, reported as one more conflict; b and d had no pods,
	// so the loser among them took a new gateway in space it owns.
	gwA, _ := s.nodes["a"].OverlayIP()
	gwC, _ := s.nodes["c"].OverlayIP()
	want := dups
	if gwA == gwC {
		want++
	}
	if got := len(s.nodes["a"].Status().Conflicts); got != want {
		t.Errorf("%d conflicts reported, %d addresses were given out on both sides (gateways %v and %v): %q", got, dups, gwA, gwC, s.nodes["a"].Status().Conflicts)
	}
	gwB, _ := s.nodes["b"].OverlayIP()
	gwD, _ := s.nodes["d"].OverlayIP()
	if gwB == gwD {
		t.Errorf("b and d, without pods, still share the gateway %v", gwB)
	}
	// From now on nobody hands out an address a pod holds, whichever
	// side it came from.
	for i := range 40 {
		n := []string{"a", "b", "c", "d"}[i%4]
		addr := s.allocEventually(t, n, fmt.Sprintf("new-%d", i), 10)
		if ids, ok := before[addr]; ok {
			t.Fatalf("%s handed out %v, still held by %v", n, addr, ids)
		}
		before[addr] = []string{n}
	}
}

func TestAutoReclaimPartitionedPeer(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	s := settledSim(t, 5, "10.0.0.0/26", 20*time.Second, names...)
	ePods := map[netip.Addr]bool{}
	for i := range 3 {
		ePods[s.allocEventually(t, "e", fmt.Sprint("e-", i), 20)] = true
	}
	s.rounds(5)
	// e is cut off but alive, and keeps allocating from the addresses a
	// majority has already seen it hold.
	s.part = map[string]int{"e": 1}
	for i := range 10 {
		if simAllocate(s.nodes["e"], fmt.Sprint("e-late-", i)) == nil {
			ePods[s.nodes["e"].pods[Key{fmt.Sprint("e-late-", i), "eth0"}]] = true
		}
		s.round()
	}
	s.rounds(40)
	st := s.nodes["a"].Status()
	for _, r := range st.Ranges {
		if r.Owner == "e" {
			t.Fatalf("e's range %v not reclaimed after 50s: %q", r.CIDR, st.Problems)
		}
	}
	t.Logf("after reclaim:\n%s", st)
	// The majority fills the whole range: none of e's addresses comes out.
	got := 0
	defer func() { t.Logf("majority allocated %d addresses; e holds %d", got, len(ePods)) }()
	for i := 0; ; i++ {
		n := names[i%4]
		if err := simAllocate(s.nodes[n], fmt.Sprint("m-", i)); err != nil {
			s.round()
			if i > 400 {
				break
			}
			continue
		}
		addr := s.nodes[n].pods[Key{fmt.Sprint("m-", i), "eth0"}]
		got++
		if ePods[addr] {
			t.Fatalf("%s allocated %v which partitioned e still holds", n, addr)
		}
	}
	clear(s.part)
	s.settle(t, 10)
	s.checkUnique(t, 5, 0)
	if c := s.nodes["e"].Status().Conflicts; len(c) > 0 {
		t.Fatalf("conflicts after heal: %q", c)
	}
}

// TestBootstrapUnderFaults runs the Paxos bootstrap with lost, duplicated
// and reordered messages, shifting partitions and restarts: there must be
// exactly one seed in the end.
func TestBootstrapUnderFaults(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		s := newSimNet(seed)
		names := []string{"a", "b", "c", "d", "e", "f", "g"}
		for _, n := range names {
			s.add(t, n, "10.0.0.0/24", len(names), 0)
		}
		s.faults = true
		for r := range 60 {
			if r%7 == 0 {
				for _, n := range names {
					s.part[n] = s.rng.IntN(2)
				}
			}
			if r%11 == 0 {
				s.restart(t, names[s.rng.IntN(len(names))])
			}
			s.round()
		}
		clear(s.part)
		s.settle(t, 10)
		seeds := map[string]bool{}
		for _, n := range names {
			st := s.nodes[n].Status()
			seeds[st.Seed] = true
			for _, p := range st.Problems {
				if strings.Contains(p, "seeded independently") {
					t.Fatalf("seed %d: %s: %s", seed, n, p)
				}
			}
		}
		if len(seeds) != 1 || seeds[""] {
			t.Fatalf("seed %d: seeds %v", seed, seeds)
		}
	}
}

// TestJoinGetsSpaceWithoutAllocate: the daemon puts a node's overlay address
// on its bridge and routes to it by the ranges it owns, so a peer that joins
// a seeded ring must get space right away, not when its first pod asks.
func TestJoinGetsSpaceWithoutAllocate(t *testing.T) {
	s := settledSim(t, 6, "10.0.0.0/24", 0, "a", "b", "c")
	j := s.add(t, "j", "10.0.0.0/24", 2, 0)
	changed := j.Subscribe()
	if _, ok := j.OverlayIP(); ok {
		t.Fatal("j has an overlay address before it learnt the ring")
	}
	s.rounds(6)
	ov, ok := j.OverlayIP()
	if !ok {
		t.Fatalf("j owns no space 6 s after joining: %+v", j.Status())
	}
	st := j.Status()
	if len(st.Owned) == 0 || st.Allocated != 0 || st.OverlayIP != ov.String() {
		t.Fatalf("j: owned %v, allocated %d, overlay %q (want %v)", st.Owned, st.Allocated, st.OverlayIP, ov)
	}
	select {
	case <-changed:
	default:
		t.Error("Subscribe did not report the ring change that gave j its space")
	}
	s.settle(t, 3)
	// Every peer computes the same overlay address for j, and no two
	// peers share one.
	seen := map[netip.Addr]string{}
	for _, n := range []string{"a", "b", "c", "j"} {
		o, ok := s.nodes[n].OverlayIP()
		if !ok {
			t.Fatalf("%s has no overlay address", n)
		}
		if prev, dup := seen[o]; dup {
			t.Fatalf("%s and %s share overlay %v", prev, n, o)
		}
		seen[o] = n
	}
	// A pod on j gets an address at once, from j's own space.
	addr := mustAlloc(t, j.Allocator, "pod-j", "eth0")
	if addr == ov {
		t.Fatalf("pod got j's overlay address %v", addr)
	}
}

// TestRemovalBeatsLateHeartbeat: the remover had not heard b's last
// heartbeats when it ran rmpeer (they were published in a partition). When
// those heartbeats reach it later they must not bring back the reservations
// of the dead peer: its addresses were handed out again by the new owner,
// and a reservation coming back would report a conflict that does not exist
// and keep those addresses reserved forever.
func TestRemovalBeatsLateHeartbeat(t *testing.T) {
	s := settledSim(t, 7, "10.0.0.0/28", 0, "a", "b", "c")
	s.part = map[string]int{"a": 1} // b and c keep talking, a misses b's heartbeats
	var bPods []netip.Addr
	for i := range 2 {
		bPods = append(bPods, mustAlloc(t, s.nodes["b"].Allocator, fmt.Sprint("b-", i), "eth0"))
	}
	s.rounds(5)
	s.kill("b")
	if _, err := s.nodes["a"].RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	// a now owns b's space; b's pods died with it, so a may use their
	// addresses. Fill all of a's space.
	got := map[netip.Addr]bool{}
	for i := 0; ; i++ {
		if err := simAllocate(s.nodes["a"], fmt.Sprint("a-", i)); err != nil {
			break
		}
		got[s.nodes["a"].pods[Key{fmt.Sprint("a-", i), "eth0"}]] = true
	}
	for _, addr := range bPods {
		if !got[addr] {
			t.Fatalf("a did not reuse dead b's address %v (got %v)", addr, got)
		}
	}
	clear(s.part)
	s.settle(t, 10)
	s.rounds(10)
	for _, n := range []string{"a", "c"} {
		st := s.nodes[n].Status()
		if len(st.Conflicts) > 0 {
			t.Errorf("%s reports conflicts for a dead, removed peer: %q", n, st.Conflicts)
		}
		for _, p := range st.Peers {
			if p.Name == "b" && (!p.Removed || p.Held != 0) {
				t.Errorf("%s sees b as %+v: its removal lost to an older heartbeat", n, p)
			}
		}
	}
}

// TestRemovedWhileAliveReasserts: rmpeer of a peer that was only
// partitioned. When it comes back it republishes itself over the removal,
// its pods' addresses are reserved again and it gets new space.
func TestRemovedWhileAliveReasserts(t *testing.T) {
	s := settledSim(t, 8, "10.0.0.0/26", 0, "a", "b", "c")
	bPod := mustAlloc(t, s.nodes["b"].Allocator, "b-0", "eth0")
	s.settle(t, 5)
	s.part = map[string]int{"b": 1}
	s.rounds(3)
	if _, err := s.nodes["a"].RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	s.rounds(3)
	clear(s.part)
	s.settle(t, 10)
	s.rounds(10)
	b := s.nodes["b"]
	st := b.Status()
	if !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "removed") }) {
		t.Errorf("b does not report its removal: %q", st.Problems)
	}
	if _, ok := b.OverlayIP(); !ok {
		t.Errorf("b got no new space after its removal: %+v", st)
	}
	for _, n := range []string{"a", "c"} {
		for _, p := range s.nodes[n].Status().Peers {
			// Held: b's pod and b's own overlay address.
			if p.Name == "b" && (p.Removed || p.Held != 2) {
				t.Errorf("%s sees b as %+v, want it back with its pod reserved", n, p)
			}
		}
	}
	// Nobody hands out b's pod address.
	for i := range 70 {
		n := []string{"a", "c"}[i%2]
		if err := simAllocate(s.nodes[n], fmt.Sprint("x-", i)); err == nil {
			if addr := s.nodes[n].pods[Key{fmt.Sprint("x-", i), "eth0"}]; addr == bPod {
				t.Fatalf("%s handed out %v, held by b's pod", n, addr)
			}
		}
		s.round()
	}
	s.checkUnique(t, 8, 0)
}
