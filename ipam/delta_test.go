package ipam

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestDeltaRing: a delta joined to the ring it was cut from gives the ring
// it was cut to; it is below the new ring (joining it there changes
// nothing); every changed address and the whole run after each changed
// run carry the new entry; every other address holds the unseeded entry.
func TestDeltaRing(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	names := []string{"a", "b", "c", ""}
	for i := range 5000 {
		// Seeded rings hold no entry of version 0 but the unseeded one
		// (decodeState refuses others).
		before, _ := randState(r).ring.rewrite(
			func(e entry) bool { return e.Version == 0 && e != (entry{}) },
			func(e entry) entry { e.Version = 1; return e })
		after := before
		for range 1 + r.IntN(4) {
			s := uint64(r.IntN(int(after.size)))
			e := s + 1 + uint64(r.IntN(int(after.size-s)))
			owner := names[r.IntN(len(names))]
			dead := ""
			if r.IntN(3) == 0 {
				dead = names[r.IntN(3)]
			}
			// Writes only raise versions, as every writer does.
			after = after.update(s, e, func(x entry) entry { return entry{Version: x.Version + 1, Owner: owner, Dead: dead} })
		}
		d := deltaRing(before, after)
		if got := joinRing(before, d); !got.equal(after) {
			t.Fatalf("case %d: before ⊔ delta != after\nbefore %v\nafter  %v\ndelta  %v\ngot    %v", i, before.segs, after.segs, d.segs, got.segs)
		}
		if got := joinRing(after, d); !got.equal(after) {
			t.Fatalf("case %d: delta is not below after: %v", i, d.segs)
		}
		// The runs of after that follow a changed run.
		follows := map[uint64]bool{}
		for off := uint64(0); off < after.size; off++ {
			next := (off + 1) % after.size
			if before.get(off) != after.get(off) && (before.get(next) == after.get(next) || next == 0) {
				k := after.find(next)
				for o := after.segs[k].start; o < after.end(k); o++ {
					follows[o] = true
				}
			}
		}
		for off := uint64(0); off < after.size; off++ {
			changed := before.get(off) != after.get(off)
			switch got := d.get(off); {
			case changed || follows[off]:
				if got != after.get(off) {
					t.Fatalf("case %d: offset %d (changed %v, in the run after a change %v) is %+v in the delta, want %+v", i, off, changed, follows[off], got, after.get(off))
				}
			case got != after.get(off) && got != (entry{}):
				t.Fatalf("case %d: offset %d is %+v in the delta: neither the new entry nor the unseeded one", i, off, got)
			}
		}
		if d.segs[0].start != 0 {
			t.Fatalf("case %d: delta not canonical: %v", i, d.segs)
		}
	}
}

// TestDeltaGoesToFewAndSpreads: with deltas on, a donation sends the
// requester the whole state and deltaFanout members a delta (not a whole
// state to everyone); each member that learns from it passes it on, and
// every ring ends equal without a push/pull.
func TestDeltaGoesToFewAndSpreads(t *testing.T) {
	names := make([]string, 40)
	for i := range names {
		names[i] = fmt.Sprintf("n%02d", i)
	}
	s := settledSim(t, 5, "10.32.0.0/16", 0, names...)
	s.whole = false // whatever -ipam.sim.whole says
	s.rounds(3)
	for len(s.queue) > 0 {
		s.deliver(len(s.queue))
	}
	type sent struct{ from, to string }
	var deltas, states []sent
	donor := s.nodes["n07"]
	donor.mu.Lock()
	before := donor.st.ring
	donor.donateLocked("n11")
	out := donor.takeOutbox()
	donor.mu.Unlock()
	for _, m := range out {
		switch m.msg[0] {
		case msgDelta:
			deltas = append(deltas, sent{"n07", m.to})
		case msgState:
			states = append(states, sent{"n07", m.to})
		}
	}
	if len(states) != 1 || states[0].to != "n11" {
		t.Fatalf("the donor sent whole states %v; want one, to the requester n11", states)
	}
	if want := deltaFanout(len(names) - 1); len(deltas) != want {
		t.Fatalf("the donor sent %d deltas, want deltaFanout(%d) = %d", len(deltas), len(names)-1, want)
	}
	for _, d := range deltas {
		if d.to == "" || d.to == "n07" {
			t.Fatalf("delta sent to %q", d.to)
		}
	}
	if donor.st.ring.equal(before) {
		t.Fatal("the donation changed nothing")
	}
	donor.flush(out)
	// Deliver without push/pull: only the epidemic carries the change.
	for range 20 {
		s.deliver(len(s.queue) + 1)
	}
	missed := 0
	for _, n := range names {
		a := s.nodes[n]
		a.mu.Lock()
		if !a.st.ring.equal(donor.st.ring) {
			missed++
		}
		a.mu.Unlock()
	}
	// fanout ln(n)+3 misses a given node with probability about
	// exp(-fanout); one seed, replayed exactly: none here.
	if missed != 0 {
		t.Fatalf("%d of %d nodes did not learn the donation from the deltas", missed, len(names))
	}
}

// TestDeltaOfAnotherSeedNotMerged: a delta holds part of a ring, so one of
// another seed (which would replace the whole ring) or sent to an unseeded
// peer is dropped, and nothing changes; one of our seed merges, once.
func TestDeltaOfAnotherSeedNotMerged(t *testing.T) {
	a, cfg := seededPair(t)
	a.mu.Lock()
	before := a.st.clone()
	a.mu.Unlock()

	part := newState(256)
	part.ring = part.ring.update(10, 20, func(entry) entry { return entry{Version: 9, Owner: "x"} })
	for _, sd := range []seed{{}, {Members: 3, ID: 5}, {Members: 2, ID: 6}} {
		part.seed = sd
		msg := append([]byte{msgDelta}, encodeState(cfg.Range, "b", part)...)
		// An unseeded state with owners is refused as corrupt; the
		// others are dropped without an error.
		if err := a.HandleMessage("b", msg); (err != nil) != sd.isZero() {
			t.Fatalf("seed %v: %v", sd, err)
		}
		a.mu.Lock()
		same := stateEqual(a.st, before) || a.st.ring.equal(before.ring) && a.st.seed == before.seed
		a.mu.Unlock()
		if !same {
			t.Fatalf("a delta of seed %v changed the ring or seed", sd)
		}
	}
	part.seed = before.seed
	part.ring = newRing(256).update(200, 210, func(entry) entry { return entry{Version: 2, Owner: "b"} })
	delta := append([]byte{msgDelta}, encodeState(cfg.Range, "b", part)...)
	if err := a.HandleMessage("b", delta); err != nil {
		t.Fatal(err)
	}
	// A second copy (every peer gets about ln(N)+3) is known: not merged
	// again, so not even this peer's heartbeat moves.
	a.mu.Lock()
	v := a.st.peers["a"].Version
	a.mu.Unlock()
	if err := a.HandleMessage("c", delta); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if got := a.st.peers["a"].Version; got != v {
		t.Fatalf("a second copy of a delta was merged again (our info moved from version %d to %d)", v, got)
	}
	if e := a.st.ring.get(205); e != (entry{Version: 2, Owner: "b"}) {
		t.Fatalf("a delta of our seed was not merged: offset 205 is %+v", e)
	}
	if e := a.st.ring.get(20); e.Version != 1 {
		t.Fatalf("an address the delta does not carry changed: %+v", e)
	}
}

// TestDeltaIsNoEcho: a delta is part of its writer's state, so it neither
// counts as an echo of a claim nor ends a restart's recovery (I6), even
// when it carries the claim: both take whole states.
func TestDeltaIsNoEcho(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	cfg.ReclaimAfter = time.Minute
	a := mustNew(t, cfg, nil)
	defer a.Close()
	a.mu.Lock()
	a.st.seed = seed{Members: 3, ID: 5}
	a.st.ring = seededRing(256, []string{"a", "b", "c"})
	// a claims c's space as its heir.
	a.st.ring = a.st.ring.update(171, 256, func(e entry) entry { return entry{Version: e.Version + 2, Owner: "a", Dead: "c"} })
	a.st.peers["b"] = peerInfo{Version: 1, ID: "id-b"}
	a.recovering = true
	a.recoveredFrom = map[string]bool{}
	claim := a.st.clone()
	a.mu.Unlock()

	msg := append([]byte{msgDelta}, encodeState(cfg.Range, "b", claim)...)
	if err := a.HandleMessage("b", msg); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	echoes := len(a.liveness.claimEcho)
	recovered := a.recoveredFrom["b"]
	a.mu.Unlock()
	if echoes != 0 {
		t.Fatalf("a delta holding the claim counted as its echo: %v", a.liveness.claimEcho)
	}
	if recovered {
		t.Fatal("a delta counted towards the end of recovery")
	}
	// The same bytes as a whole state count (the test would pass
	// vacuously otherwise).
	if err := a.MergeRemoteState(encodeState(cfg.Range, "b", claim)); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.liveness.claimEcho) == 0 || !a.recoveredFrom["b"] && a.recovering {
		t.Fatalf("the whole state did not count: echoes %v, recovered %v (recovering %v)", a.liveness.claimEcho, a.recoveredFrom, a.recovering)
	}
}

// TestDeltaForwardBounded: a peer passes on at most deltaForwardsPerTick
// deltas per tick, and none larger than maxDeltaForward, whatever a peer
// holding the key sends: a flood of deltas costs each peer a bounded
// amount of sending.
func TestDeltaForwardBounded(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f"}
	s, a, base := quietDeltaSim(t, 3, names...)
	// Each forged delta raises one address of b's space: new to a, so a
	// would pass each on.
	var bOff uint64
	for _, sp := range base.ring.owned("b") {
		bOff = sp.start
		break
	}
	for i := range 3 * deltaForwardsPerTick {
		part := state{seed: base.seed, ring: newRing(base.ring.size), peers: map[string]peerInfo{}}
		off := bOff + uint64(i)
		v := base.ring.get(off).Version + 1
		part.ring = part.ring.update(off, off+1, func(entry) entry { return entry{Version: v, Owner: "b"} })
		if err := a.HandleMessage("b", append([]byte{msgDelta}, encodeState(a.cfg.Range, "b", part)...)); err != nil {
			t.Fatal(err)
		}
	}
	forwarded := 0
	for _, m := range s.queue {
		if m.from == "a" && m.data[0] == msgDelta {
			forwarded++
		}
	}
	if max := deltaForwardsPerTick * deltaFanout(len(names)-2); forwarded > max || forwarded == 0 {
		t.Fatalf("a forwarded %d deltas in one tick, want 1..%d", forwarded, max)
	}
	// A big delta merges but is not passed on: one new address, and
	// thousands of invented peers (which the bounds refuse) to pass
	// maxDeltaForward.
	a.Tick()
	s.queue = nil
	part := state{seed: base.seed, ring: newRing(base.ring.size), peers: map[string]peerInfo{}}
	off := bOff + 500
	v := base.ring.get(off).Version + 1
	part.ring = part.ring.update(off, off+1, func(entry) entry { return entry{Version: v, Owner: "b"} })
	for k := range 3000 {
		part.peers[fmt.Sprintf("invented-peer-%05d", k)] = peerInfo{Version: 1, ID: fmt.Sprintf("an-identifier-long-enough-%05d", k)}
	}
	msg := append([]byte{msgDelta}, encodeState(a.cfg.Range, "b", part)...)
	if len(msg) <= maxDeltaForward {
		t.Fatalf("test delta of %d bytes, want more than %d", len(msg), maxDeltaForward)
	}
	_ = a.HandleMessage("b", msg)
	a.mu.Lock()
	got := a.st.ring.get(off)
	a.mu.Unlock()
	if got.Version != v {
		t.Fatalf("the big delta was not merged: offset %d is %+v", off, got)
	}
	for _, m := range s.queue {
		if m.from == "a" && m.data[0] == msgDelta {
			t.Fatalf("a passed on a delta of %d bytes (bound %d)", len(m.data), maxDeltaForward)
		}
	}
}

// TestVersionZeroEntryRefused: the unseeded entry (version 0) is what a
// delta holds where it carries nothing, so it must lose to every entry of
// a ring; a state whose seeded ring names a peer at version 0 (no writer
// writes one) is refused whole.
func TestVersionZeroEntryRefused(t *testing.T) {
	a, cfg := seededPair(t)
	a.mu.Lock()
	before := a.st.ring.clone()
	a.mu.Unlock()
	forged := newState(256)
	forged.seed = seed{Members: 2, ID: 5}
	forged.ring = seededRing(256, []string{"a", "b"}).update(0, 10, func(entry) entry { return entry{Dead: "a"} })
	err := a.MergeRemoteState(encodeState(cfg.Range, "b", forged))
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("merge: %v, want ErrRejected", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.st.ring.equal(before) {
		t.Fatalf("the refused state changed the ring: %v", a.st.ring.segs)
	}
	if a.guard.count[RejectCounter] != 1 {
		t.Fatalf("refusals %v, want one %s", a.guard.count, RejectCounter)
	}
}

// TestDeltaScreened: a delta goes through the same bounds as a whole
// state: one whose ring jumps beyond maxRingStep is refused whole and
// counted, and nothing of it is merged or passed on.
func TestDeltaScreened(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	s, a, base := quietDeltaSim(t, 4, names...)
	part := state{seed: base.seed, ring: newRing(base.ring.size), peers: map[string]peerInfo{}}
	sp := base.ring.owned("b")[0]
	part.ring = part.ring.update(sp.start, sp.end, func(entry) entry {
		return entry{Version: base.ring.get(sp.start).Version + maxRingStep + 1, Owner: "d"}
	})
	err := a.HandleMessage("d", append([]byte{msgDelta}, encodeState(a.cfg.Range, "d", part)...))
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("HandleMessage: %v, want ErrRejected", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.st.ring.equal(base.ring) {
		t.Fatal("the refused delta changed the ring")
	}
	if a.guard.count[RejectCounter] != 1 {
		t.Fatalf("refusals %v, want one %s", a.guard.count, RejectCounter)
	}
	if len(s.queue) != 0 {
		t.Fatalf("a refused delta was passed on: %d messages queued", len(s.queue))
	}
}

// seededPair is peer a of a /24 seeded for a and b, closed when the test
// ends.
func seededPair(t *testing.T) (*Allocator, Config) {
	t.Helper()
	cfg := testConfig(t, "a", "10.0.0.0/24")
	a := mustNew(t, cfg, nil)
	t.Cleanup(func() { a.Close() })
	a.mu.Lock()
	a.st.seed = seed{Members: 2, ID: 5}
	a.st.ring = seededRing(256, []string{"a", "b"})
	a.mu.Unlock()
	return a, cfg
}

// quietDeltaSim is a settled mesh of names on a /16 announcing by deltas,
// with nothing queued, its peer a, and a copy of a's state.
func quietDeltaSim(t *testing.T, seed uint64, names ...string) (*simNet, *simNode, state) {
	t.Helper()
	s := settledSim(t, seed, "10.0.0.0/16", 0, names...)
	s.whole = false // whatever -ipam.sim.whole says
	a := s.nodes["a"]
	a.mu.Lock()
	base := a.st.clone()
	a.mu.Unlock()
	s.queue = nil
	return s, a, base
}
