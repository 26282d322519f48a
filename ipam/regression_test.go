package ipam

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// Regression tests for issue 10: each reproduces one finding of the review
// in a small, hand-driven simulation and fails on the code before the fix.

// fillAll allocates on node until it fails for rounds rounds in a row and
// returns every address it got. Used to let an heir or a winner hand out
// everything it can.
func (s *simNet) fillAll(t *testing.T, name, prefix string, rounds int) []netip.Addr {
	t.Helper()
	var got []netip.Addr
	fails := 0
	for i := 0; fails < rounds; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if err := simAllocate(s.nodes[name], id); err != nil {
			fails++
			s.round()
			continue
		}
		fails = 0
		got = append(got, s.nodes[name].pods[Key{id, "eth0"}])
	}
	return got
}

func podAddrs(n *simNode) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, a := range n.pods {
		out[a] = true
	}
	return out
}

// Finding 1: a donation of a range below the node's lowest one moved its
// gateway, and the old gateway went to a new pod of the same node.
func TestRegressionGatewayMovesOnLowerDonation(t *testing.T) {
	s := settledSim(t, 101, "10.0.0.0/24", 0, "a", "b")
	gw, ok := s.nodes["b"].OverlayIP()
	if !ok {
		t.Fatalf("b has no gateway: %+v", s.nodes["b"].Status())
	}
	// b fills its half (127 pods), then needs space from a, whose largest
	// free run lies below b's range.
	for i := 0; i < 140; i++ {
		addr := s.allocEventually(t, "b", fmt.Sprint("b-", i), 10)
		if addr == gw {
			t.Fatalf("pod b-%d got b's gateway %v", i, gw)
		}
		if now, ok := s.nodes["b"].OverlayIP(); !ok || now != gw {
			t.Fatalf("after pod b-%d (%v) b's gateway is %v, %v; was %v (%d pods use it)", i, addr, now, ok, gw, len(s.nodes["b"].pods))
		}
	}
	owned := s.nodes["b"].Status().Owned
	if len(owned) < 2 {
		t.Fatalf("b never received a donation: owns %v", owned)
	}
	s.checkUnique(t, 101, 0)
}

// Finding 1, second path: a deleted Node's space goes to its heir, whose
// new range lies below its own.
func TestRegressionGatewayMovesOnNodeDeletion(t *testing.T) {
	s := settledSim(t, 102, "10.0.0.0/24", 0, "a", "b", "c")
	gw, ok := s.nodes["c"].OverlayIP()
	if !ok {
		t.Fatal("c has no gateway")
	}
	s.allocEventually(t, "c", "c-0", 5)
	s.kill("a")
	for _, n := range []string{"b", "c"} {
		if _, err := s.nodes[n].RemovePeerAuthoritative("a"); err != nil {
			t.Fatal(err)
		}
	}
	s.settle(t, 10)
	// c is a's heir (it owns the address below a's range, cyclically).
	if st := s.nodes["c"].Status(); !slices.Contains(st.Owned, "10.0.0.0/26") {
		t.Fatalf("c did not inherit a's space: owns %v", st.Owned)
	}
	if now, ok := s.nodes["c"].OverlayIP(); !ok || now != gw {
		t.Fatalf("c's gateway moved from %v to %v (%v) when it inherited a lower range", gw, now, ok)
	}
	for i := range 100 {
		if err := simAllocate(s.nodes["c"], fmt.Sprint("c-x", i)); err == nil {
			if addr := s.nodes["c"].pods[Key{fmt.Sprint("c-x", i), "eth0"}]; addr == gw {
				t.Fatalf("c handed its gateway %v to a pod", gw)
			}
		}
	}
}

// Finding 1, by reading: with reclaim on, the gateway was not reported after
// a restart until a majority had echoed it again.
func TestRegressionGatewayReportedAfterRestart(t *testing.T) {
	s := settledSim(t, 103, "10.0.0.0/24", time.Minute, "a", "b", "c")
	s.rounds(5)
	gw, ok := s.nodes["a"].OverlayIP()
	if !ok {
		t.Fatalf("a has no gateway after settling: %+v", s.nodes["a"].Status())
	}
	s.part = map[string]int{"a": 1} // nobody can echo anything now
	s.restart(t, "a")
	if now, ok := s.nodes["a"].OverlayIP(); !ok || now != gw {
		t.Fatalf("right after a restart a reports gateway %v, %v; want %v", now, ok, gw)
	}
}

// Finding 2(a): with reclaim on, b echoes a's new Held addresses, restarts
// and forgets them; a, cut off, keeps its pods, and its heir hands them out.
func TestRegressionEchoForgottenAfterRestart(t *testing.T) {
	s := settledSim(t, 104, "10.0.0.0/24", 20*time.Second, "a", "b", "c")
	s.rounds(5)
	// c is away for a moment: a's new leases are echoed by b alone (a
	// majority of 3 with a itself).
	s.part = map[string]int{"c": 1}
	for i := range 16 {
		s.allocEventually(t, "a", fmt.Sprint("a-", i), 10)
	}
	s.rounds(2)
	s.restart(t, "b")
	// Now a is cut off, b and c talk: after ReclaimAfter they reclaim a.
	s.part = map[string]int{"a": 1}
	s.rounds(60)
	aPods := podAddrs(s.nodes["a"])
	for _, n := range []string{"b", "c"} {
		for _, addr := range s.fillAll(t, n, n+"-fill", 5) {
			if aPods[addr] {
				t.Fatalf("%s handed out %v, held by a pod of partitioned a", n, addr)
			}
		}
	}
}

// Finding 2(b): a majority restarts at once (a power loss) while b is cut
// off; b's heir hands out b's live pods' addresses.
func TestRegressionPowerLossForgetsHeld(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	s := settledSim(t, 105, "10.0.0.0/24", 20*time.Second, names...)
	s.rounds(5)
	for i := range 32 {
		s.allocEventually(t, "b", fmt.Sprint("b-", i), 10)
	}
	s.rounds(3)
	// b is cut off; e is away too, so the restarted a, c and d are the
	// majority that decides alone.
	s.part = map[string]int{"b": 1, "e": 2}
	for _, n := range []string{"a", "c", "d"} {
		s.restart(t, n)
	}
	s.rounds(60)
	bPods := podAddrs(s.nodes["b"])
	for _, n := range []string{"a", "c", "d"} {
		for _, addr := range s.fillAll(t, n, n+"-fill", 5) {
			if bPods[addr] {
				t.Fatalf("%s handed out %v, held by a pod of partitioned b", n, addr)
			}
		}
	}
}

// Finding 2(c): two independently seeded rings exchange one state; the
// winner restarts and hands out an address a pod of the loser holds.
func TestRegressionSeedClashForgottenAfterRestart(t *testing.T) {
	s := newSimNet(106)
	for _, n := range []string{"x", "y"} {
		s.add(t, n, "10.0.0.0/24", 1, 0)
	}
	s.part = map[string]int{"x": 1, "y": 2}
	winner, loser := "x", "y"
	if compareSeed(s.nodes["y"].st.seed, s.nodes["x"].st.seed) > 0 {
		winner, loser = "y", "x"
	}
	for i := range 3 {
		s.allocEventually(t, winner, fmt.Sprint("w-", i), 5)
	}
	for i := range 12 {
		s.allocEventually(t, loser, fmt.Sprint("l-", i), 5)
	}
	before := podAddrs(s.nodes[winner]) // duplicates made before they met are not the point
	if err := s.nodes[winner].MergeRemoteState(s.nodes[loser].LocalState()); err != nil {
		t.Fatal(err)
	}
	s.restart(t, winner)
	lPods := podAddrs(s.nodes[loser])
	for i := range 40 {
		addr := s.allocEventually(t, winner, fmt.Sprint("w-late-", i), 5)
		if lPods[addr] && !before[addr] {
			t.Fatalf("winner %s handed out %v after a restart, held by a pod of %s", winner, addr, loser)
		}
	}
}

// Finding 3: with reclaim on and 2 of 4 peers dead (not removed), a healthy
// peer could place only its pool although it owns plenty of free space.
func TestRegressionReclaimAvailabilityHalfDead(t *testing.T) {
	s := settledSim(t, 107, "10.0.0.0/23", time.Minute, "a", "b", "c", "d")
	s.kill("c")
	s.kill("d")
	s.rounds(3)
	if f := s.nodes["a"].Status().Free; f < 100 {
		t.Fatalf("a has only %d free addresses", f)
	}
	placed := 0
	for i := 0; i < 60; i++ {
		for r := 0; r < 10; r++ {
			if simAllocate(s.nodes["a"], fmt.Sprint("a-", i)) == nil {
				placed++
				break
			}
			s.round()
		}
	}
	if placed != 60 {
		t.Fatalf("a placed %d of 60 pods with 2 of 4 peers dead: %+v", placed, s.nodes["a"].Status())
	}
	s.checkUnique(t, 107, 0)
}

// Finding 4 (ipam part): a Kubernetes Node deleted while its daemon still
// runs: the heir must not hand out addresses the removed peer's pods hold.
func TestRegressionNodeDeletionKeepsReservations(t *testing.T) {
	s, bPods := threeWithPodsOnB(t, 108, 10)
	s.part = map[string]int{"b": 1} // its daemon runs, but has not heard yet
	for _, n := range []string{"a", "c"} {
		if _, err := s.nodes[n].RemovePeerAuthoritative("b"); err != nil {
			t.Fatal(err)
		}
	}
	s.rounds(5)
	for _, n := range []string{"a", "c"} {
		for _, addr := range s.fillAll(t, n, n+"-fill", 3) {
			if bPods[addr] {
				t.Fatalf("%s handed out %v, held by a pod of the deleted Node b", n, addr)
			}
		}
	}

}

// transfer writes what donateLocked writes when from gives sp to to (the
// test picks the span instead of the largest free run): version+1, persist,
// broadcast.
func (s *simNet) transfer(t *testing.T, from, to string, sp span) {
	t.Helper()
	a := s.nodes[from].Allocator
	a.mu.Lock()
	for off := sp.start; off < sp.end; off++ {
		if e := a.st.ring.get(off); e.Owner != from || e.Dead != "" {
			a.mu.Unlock()
			t.Fatalf("%s gives offset %d it does not own: %+v", from, off, e)
		}
	}
	a.st.ring = a.st.ring.update(sp.start, sp.end, func(e entry) entry {
		return entry{Version: e.Version + 1, Owner: to}
	})
	a.afterRingChangeLocked()
	a.publishLocked()
	if err := a.saveLocked(); err != nil {
		a.mu.Unlock()
		t.Fatal(err)
	}
	a.broadcastStateLocked()
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
	s.deliver(len(s.queue) * 2)
}

// Soak seed 36 of TestSimulationRestarts: a silent peer's space changed
// hands in its partition (a gave it to r, r gave it back) while the majority
// tombstoned it without knowing. With a tombstone one version above what its
// writer saw, that chain of transfers tied with the heir's claim and won
// (a plain owner beats a reclaim entry), so a kept allocating where the heir
// would too once it confirmed, and states of the chain counted as echoes of
// a tombstone they never held. The tombstone must beat every transfer its
// writer had not seen: whoever merges the heir's claim no longer owns the
// space.
func TestRegressionReclaimBeatsUnseenTransfers(t *testing.T) {
	s := newSimNet(136)
	// Whole states, as before deltas: the scenario's timing (reclaim
	// after 8 s) has every ring change carry every peer's heartbeat,
	// which a delta, carrying its writer's info only, does not; with
	// deltas another peer is found silent first and the layout differs.
	s.whole = true
	names := []string{"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"}
	for _, n := range names {
		s.add(t, n, "10.0.0.0/24", len(names), 8*time.Second)
	}
	s.settle(t, 10)
	s.rounds(5)
	const a, r = "p3", "p6"
	an := s.nodes[a].Allocator
	an.mu.Lock()
	own := an.st.ring.owned(a)[0]
	h := an.st.ring.get((own.start + an.st.ring.size - 1) % an.st.ring.size).Owner
	an.mu.Unlock()
	if h == a || h == r || h == "" {
		t.Fatalf("unexpected layout: %s's range %v follows %q", a, own, h)
	}
	x := span{own.end - 8, own.end} // free: the pool and gateway sit low
	// a and r are cut off together; inside, x goes a -> r -> a.
	s.part = map[string]int{a: 1, r: 1}
	s.updateMembers()
	s.transfer(t, a, r, x)
	s.transfer(t, r, a, x)
	if e := an.Ranges(); !slices.ContainsFunc(e, func(ro RangeOwner) bool {
		return ro.Owner == a && ro.CIDR.Contains(offsetAddr(s.nodes[a].cfg.Range, x.start))
	}) {
		t.Fatalf("%s does not own x after the transfers: %v", a, e)
	}
	// The other six (a reclaim quorum of 8) tombstone a's space after
	// ReclaimAfter; take the heir's state as soon as it claims x.
	var claim []byte
	for i := 0; i < 40 && claim == nil; i++ {
		s.round()
		hn := s.nodes[h].Allocator
		hn.mu.Lock()
		if e := hn.st.ring.get(x.start); e.Owner == h && e.Dead == a {
			claim = encodeState(hn.cfg.Range, h, hn.st)
		}
		hn.mu.Unlock()
	}
	if claim == nil {
		t.Fatalf("heir %s never claimed %s's space: %+v", h, a, s.nodes[h].Status())
	}
	// a hears of the claim: it must stop owning x, whatever the versions
	// its partition reached.
	if err := s.nodes[a].MergeRemoteState(claim); err != nil {
		t.Fatal(err)
	}
	an.mu.Lock()
	for off := x.start; off < x.end; off++ {
		if e := an.st.ring.get(off); e.Owner == a {
			an.mu.Unlock()
			t.Fatalf("%s still owns offset %d (%+v) after merging heir %s's claim: both may allocate there", a, off, e, h)
		}
	}
	an.mu.Unlock()
	// And r's view of the chain (x at two versions above what the heir saw
	// a own) never counts as an echo of the tombstone.
	rn := s.nodes[r].Allocator
	rn.mu.Lock()
	rState := encodeState(rn.cfg.Range, r, rn.st)
	rn.mu.Unlock()
	hn := s.nodes[h].Allocator
	hn.mu.Lock()
	var before []claimKey
	for k, m := range hn.liveness.claimEcho {
		if !m[r] {
			before = append(before, k)
		}
	}
	hn.mu.Unlock()
	if err := hn.MergeRemoteState(rState); err != nil {
		t.Fatal(err)
	}
	hn.mu.Lock()
	defer hn.mu.Unlock()
	for _, k := range before {
		if k.start >= x.start && k.start < x.end && hn.liveness.claimEcho[k][r] {
			t.Fatalf("heir %s counted %s, which never saw the tombstone, as an echo of its claim at %d", h, r, k.start)
		}
	}
}

// Soak seed 31 of TestSimulationRestarts: on a nearly full range, the last
// free addresses sat in an idle peer's lease pool, which it never gave
// away, while other peers waited for space for good. An idle peer whose
// pool is all its free space gives it up on request; a keeps space (its
// gateway), so it gives everything.
func TestRegressionIdlePoolGivenOnRequest(t *testing.T) {
	s := newSimNet(131)
	for _, n := range []string{"a", "b"} {
		s.add(t, n, "10.0.0.0/27", 2, time.Minute)
	}
	s.settle(t, 10)
	s.rounds(5)
	got := s.fillAll(t, "b", "b", 30)
	st := s.nodes["a"].Status()
	if st.Free > 0 {
		t.Fatalf("b stopped after %d pods while idle a still has %d free addresses: %+v", len(got), st.Free, st)
	}
	s.checkUnique(t, 131, 0)
}
