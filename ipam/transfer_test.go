package ipam

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestReleaseRule: once the peers list their space in their signed infos,
// a state that moves a live peer's space without that peer's release is
// refused whole, counted as unreleased-transfer and named in status, in
// every form a holder of the mesh key can write it; the forms the rule
// lets through (a removal, reclaim on, infos without the list) are the
// documented ones (docs/ipam.md, "Signed ring transfers").
func TestReleaseRule(t *testing.T) {
	take := func(to string, dv uint64, dead string) func(*testing.T, *simNet, *wireState, string) {
		return func(t *testing.T, _ *simNet, w *wireState, victim string) {
			sp := spanOf(t, w.st.ring, victim)
			w.st.ring = w.st.ring.update(sp.start, sp.end, func(e entry) entry {
				return entry{Version: e.Version + dv, Owner: to, Dead: dead}
			})
		}
	}
	for _, tc := range []struct {
		name   string
		victim string
		forge  func(t *testing.T, net *simNet, w *wireState, victim string)
		delta  bool
		noList bool // the peers do not list their space (Config.ListOwned)
		setup  func(t *testing.T, net *simNet)
		// want is the refusal reason, "" when the state is taken; moved
		// says whether the victim's space moves.
		want  string
		moved bool
	}{
		{name: "another peer's range to the forger, one version ahead", victim: "b", forge: take("evil", 1, ""), want: RejectUnreleased},
		{name: "another peer's range to an honest peer, one version ahead", victim: "b", forge: take("c", 1, ""), want: RejectUnreleased},
		{name: "another peer's range at its own version to a name that sorts after it", victim: "b", forge: take("zz", 0, ""), want: RejectUnreleased},
		{name: "another peer's range far ahead", victim: "b", forge: take("evil", 1000, ""), want: RejectUnreleased},
		{name: "the receiver's own range", victim: "a", forge: take("evil", 1, ""), want: RejectUnreleased},
		{name: "a tombstone of a live peer", victim: "b", forge: take("", 1, "b"), want: RejectUnreleased},
		{name: "a claim of a live peer's range as its heir", victim: "b", forge: take("evil", 2, "b"), want: RejectUnreleased},
		{name: "a contested run over a live peer's range", victim: "b", forge: take("", 2, ""), want: RejectUnreleased},
		{name: "a delta one version ahead: not merged, not counted", victim: "b", forge: take("evil", 1, ""), delta: true},
		{name: "a delta two versions ahead: not merged, not counted", victim: "b", forge: take("evil", 2, ""), delta: true},
		{name: "an honest delta carrying an rmpeer's run whose own delta was missed: not merged, not counted", victim: "b", setup: func(t *testing.T, net *simNet) {
			if _, err := net.nodes["c"].RemovePeer("b"); err != nil {
				t.Fatal(err)
			}
		}, forge: func(t *testing.T, net *simNet, w *wireState, _ string) {
			// c tombstoned b's range one version ahead; a later delta
			// carries that run unchanged, beside a change of its own,
			// and names neither b nor its removal.
			*w = stateOf(t, net.nodes["c"])
			delete(w.st.peers, "b")
		}, delta: true},
		{name: "a peer removed by a signed rmpeer: its tombstone is taken", victim: "b", setup: func(t *testing.T, net *simNet) {
			if _, err := net.nodes["c"].RemovePeer("b"); err != nil {
				t.Fatal(err)
			}
		}, forge: func(t *testing.T, net *simNet, w *wireState, _ string) {
			*w = stateOf(t, net.nodes["c"])
		}, moved: true},
		{name: "infos without the list (an upgrade not finished): taken as before", victim: "b", noList: true, forge: take("evil", 1, ""), moved: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids := newTestIdentities("a", "b", "c", "d")
			net := newSimNet(11)
			net.ids = ids
			net.forged = true
			net.noOwned = tc.noList
			a := settleTrio(t, net)
			a.Allocator.cfg.IsMember = func(name string) bool { return name != "nobody" }
			if p := a.Allocator.st.peers[tc.victim]; p.ListsOwned == net.noOwned || !net.noOwned && len(p.Owned) == 0 {
				t.Fatalf("%s's info lists its space: %v (%v), want %v", tc.victim, p.ListsOwned, p.Owned, !net.noOwned)
			}
			before := a.Allocator.st.ring.owned(tc.victim)
			w := stateOf(t, net.nodes["c"])
			if tc.setup != nil {
				tc.setup(t, net)
			}
			tc.forge(t, net, &w, tc.victim)
			if w.sender == "c" && tc.setup == nil {
				w.sender = "evil"
			}
			kind := msgState
			if tc.delta {
				kind = msgDelta
			}
			err := a.HandleMessage("evil", append([]byte{kind}, encodeStateAs(w.prefix, w.sender, w.st, true)...))
			after := a.Allocator.st.ring.owned(tc.victim)
			if moved := fmt.Sprint(after) != fmt.Sprint(before); moved != tc.moved {
				t.Fatalf("%s's space moved = %v (%v, was %v), want %v; err %v", tc.victim, moved, after, before, tc.moved, err)
			}
			st := a.Status()
			if tc.want == "" {
				if err != nil || len(st.Rejected) != 0 {
					t.Fatalf("refused: %v, rejections %v", err, st.Rejected)
				}
				return
			}
			if !errors.Is(err, ErrRejected) || st.Rejected[tc.want] != 1 || len(st.Rejected) != 1 {
				t.Fatalf("err %v, rejections %v, want one %s", err, st.Rejected, tc.want)
			}
			named := 0
			for _, p := range st.Problems {
				if strings.Contains(p, "("+tc.want+")") && strings.Contains(p, "moves space of "+tc.victim) {
					named++
				}
			}
			if named != 1 {
				t.Fatalf("refusal named %d times in %q", named, st.Problems)
			}
			// The receiver keeps allocating in its own space.
			mustAlloc(t, a.Allocator, "pod2", "eth0")
		})
	}
}

// TestOwnedListedForGood: a peer lists its space once every member reads
// the list (and, signing, once it sends signed states), with exactly the
// space it owns as a plain owner, and keeps listing it when the gate says
// no again and across a restart; a donation lists the new space in the
// same step.
func TestOwnedListedForGood(t *testing.T) {
	net := newSimNet(13)
	net.noOwned = true
	for _, n := range []string{"a", "b", "c"} {
		net.add(t, n, "10.0.0.0/16", 3, 0)
	}
	net.settle(t, 5)
	info := func(name string) peerInfo { return net.nodes[name].Allocator.st.peers[name] }
	if p := info("b"); p.ListsOwned || p.Owned != nil {
		t.Fatalf("listed before every member reads it: %+v", p)
	}
	net.noOwned = false
	net.settle(t, 3)
	net.noOwned = true
	net.restart(t, "b")
	net.settle(t, 3)
	for _, n := range []string{"a", "b", "c"} {
		p, r := info(n), net.nodes[n].Allocator.st.ring
		if !p.ListsOwned || fmt.Sprint(p.Owned) != fmt.Sprint(r.owned(n)) || len(p.Owned) == 0 {
			t.Fatalf("%s lists %v (%v), owns %v", n, p.ListsOwned, p.Owned, r.owned(n))
		}
	}
	// Removed while alive by another (whose removal lists nothing), b
	// comes back listing its (now empty) space, the gate still closed.
	if _, err := net.nodes["c"].RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	net.settle(t, 3)
	if p := info("b"); p.Removed || !p.ListsOwned {
		t.Fatalf("b after an rmpeer while alive: %+v", p)
	}
	// A donation: the donor's info in its very next state no longer
	// lists what it gave.
	donor := net.nodes["a"]
	had := donor.Allocator.st.ring.owned("a")
	donor.Allocator.mu.Lock()
	donor.Allocator.donateLocked("c")
	p, r := donor.Allocator.st.peers["a"], donor.Allocator.st.ring
	out := donor.Allocator.takeOutbox()
	donor.Allocator.mu.Unlock()
	donor.Allocator.flush(out)
	if fmt.Sprint(p.Owned) != fmt.Sprint(r.owned("a")) || fmt.Sprint(had) == fmt.Sprint(r.owned("a")) {
		t.Fatalf("after the donation a lists %v, owns %v (owned %v before)", p.Owned, r.owned("a"), had)
	}
	net.settle(t, 3)
	for name, n := range net.nodes {
		if c, note := n.Allocator.refusals(RejectUnreleased); c != 0 {
			t.Fatalf("%s refused the donation: %s", name, note)
		}
	}
}

// TestOwnedSignedAndWellFormed: the list is covered by the info's
// signature, and the decoder refuses every list that is not one sorted
// run of maximal, non-empty spans inside the range.
func TestOwnedSignedAndWellFormed(t *testing.T) {
	ids := newTestIdentities("a", "b", "c", "d")
	net, a := signedNet(t, ids)
	w := stateOf(t, net.nodes["c"])
	w.sender = "evil"
	b := w.st.peers["b"]
	if !b.ListsOwned || len(b.Owned) == 0 || len(b.Sig) == 0 {
		t.Fatalf("b's info: %+v", b)
	}
	b.Owned = b.Owned[:len(b.Owned)-1]
	b.Version++
	w.st.peers["b"] = b
	_ = sendSigned(a, w)
	if a.Status().Rejected[RejectBadSignature] != 1 {
		t.Fatalf("a list cut short under b's signature: %v", a.Status().Rejected)
	}

	// A list beyond its bound, under the forger's own name.
	w = stateOf(t, net.nodes["c"])
	w.sender = "evil"
	long := make([]span, maxOwnedSpans+1)
	for i := range long {
		long[i] = span{uint64(2 * i), uint64(2*i + 1)}
	}
	w.st.peers["evil"] = peerInfo{Version: uint64(net.clock.Now().UnixMilli()), ID: "evil", ListsOwned: true, Owned: long}
	_ = send(a, w)
	if _, ok := a.Allocator.st.peers["evil"]; ok || a.Status().Rejected[RejectHeld] != 1 {
		t.Fatalf("a list of %d spans: taken %v, rejections %v", len(long), ok, a.Status().Rejected)
	}

	for _, tc := range []struct {
		name  string
		owned []span
		want  string
	}{
		{"empty span", []span{{4, 4}}, "empty owned span"},
		{"adjacent", []span{{4, 8}, {8, 9}}, "adjacent or overlapping"},
		{"beyond the range", []span{{4, 1 << 17}}, "beyond the range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := stateOf(t, net.nodes["c"]).st
			p := st.peers["b"]
			p.Owned = tc.owned
			st.peers["b"] = p
			_, err := decodeState(encodeStateAs(w.prefix, "c", st, true))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decode: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRegressionConcurrentRmpeer: two writers of one step over the same
// run (an rmpeer run on two peers at once; an rmpeer beside a transfer
// its writer had not heard of). An rmpeer writes tombstones, so the two
// removals write the same entries, and a transfer beats a tombstone of
// its version: no tie, one owner (docs/ipam.md, "mesh rmpeer NAME").
// When an rmpeer wrote its writer as the owner, the release rule refused
// the winner of such a tie on the losing side for good, and both sides
// owned the run.
func TestRegressionConcurrentRmpeer(t *testing.T) {
	for _, tc := range []struct {
		name string
		race func(t *testing.T, net *simNet, dead []span)
		// owner at the end of what of d's space it had before the race
		// ("" for any live peer)
		owner string
	}{
		{name: "rmpeer on two peers at once", race: func(t *testing.T, net *simNet, _ []span) {
			for _, n := range []string{"a", "b"} {
				if _, err := net.nodes[n].RemovePeer("d"); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{name: "rmpeer beside a transfer its writer had not heard of", owner: "a", race: func(t *testing.T, net *simNet, dead []span) {
			// d gives a all it has just before it dies; b, cut off,
			// removes d before that transfer reaches it.
			net.part["b"] = 1
			d := net.nodes["d"].Allocator
			for range 20 {
				d.mu.Lock()
				d.donateLocked("a")
				out := d.takeOutbox()
				d.mu.Unlock()
				d.flush(out)
				net.deliver(100)
			}
			if !overlapsAny(net.nodes["a"].Allocator.st.ring.owned("a"), dead) {
				t.Fatalf("a owns %v, none of d's former %v", net.nodes["a"].Allocator.st.ring.owned("a"), dead)
			}
			if _, err := net.nodes["b"].RemovePeer("d"); err != nil {
				t.Fatal(err)
			}
			delete(net.part, "b")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := newSimNet(41)
			for _, n := range []string{"a", "b", "c", "d"} {
				net.add(t, n, "10.0.0.0/16", 4, 0)
			}
			net.settle(t, 5)
			dead := net.nodes["d"].Allocator.st.ring.owned("d")
			tc.race(t, net, dead)
			given := overlap(net.nodes["a"].Allocator.st.ring.owned("a"), dead)
			net.queue = nil // nothing of the race is delivered before both wrote
			net.kill("d")
			delete(net.gone, "d")
			net.settle(t, 5)
			for _, n := range []string{"a", "b", "c"} {
				if c, note := net.nodes[n].Allocator.refusals(RejectUnreleased); c != 0 {
					t.Fatalf("%s refused %d honest states: %s", n, c, note)
				}
			}
			// Every address of d's former space has one plain owner,
			// the same in every view (settle checked the views agree).
			r := net.nodes["c"].Allocator.st.ring
			for _, sp := range dead {
				for off := sp.start; off < sp.end; off = r.end(r.find(off)) {
					e := r.get(off)
					if e.Owner == "" || e.Owner == "d" || e.Dead != "" || tc.owner != "" && overlaps(given, span{off, off + 1}) && e.Owner != tc.owner {
						t.Fatalf("d's former run at %d: %+v", off, e)
					}
				}
			}
		})
	}
}

// TestConcurrentRmpeerMovedOn: the rmpeer on two peers at once of
// TestRegressionConcurrentRmpeer, where the heir gives part of what it
// inherited to another peer before the other remover, cut off and
// restarted meanwhile, hears of either: every view ends with one owner
// per address and nothing refused.
func TestConcurrentRmpeerMovedOn(t *testing.T) {
	net := newSimNet(42)
	net.ids = newTestIdentities("a", "b", "c", "d", "e")
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		net.add(t, n, "10.0.0.0/16", 5, 0)
	}
	net.settle(t, 5)
	dead := net.nodes["d"].Allocator.st.ring.owned("d")
	net.kill("d")
	delete(net.gone, "d")
	net.part["a"] = 1
	for _, n := range []string{"a", "b"} {
		if _, err := net.nodes[n].RemovePeer("d"); err != nil {
			t.Fatal(err)
		}
	}
	net.rounds(5)
	// Whoever inherited d's space gives it on until some of it changed
	// hands again.
	owner := func() string {
		r := net.nodes["b"].Allocator.st.ring
		return r.get(dead[0].start).Owner
	}
	heir := owner()
	if heir == "" || heir == "d" {
		t.Fatalf("no heir owns d's former space: %+v", net.nodes["b"].Allocator.st.ring.get(dead[0].start))
	}
	to := "c"
	if heir == "c" {
		to = "e"
	}
	h := net.nodes[heir].Allocator
	for i := 0; i < 16 && owner() == heir; i++ {
		h.mu.Lock()
		h.donateLocked(to)
		out := h.takeOutbox()
		h.mu.Unlock()
		h.flush(out)
		net.rounds(2)
	}
	if got := owner(); got == heir {
		t.Fatalf("d's former space did not move on from its heir %s", heir)
	}
	net.restart(t, "a")
	delete(net.part, "a")
	net.settle(t, 5)
	for _, n := range []string{"a", "b", "c", "e"} {
		if c, note := net.nodes[n].Allocator.refusals(RejectUnreleased); c != 0 {
			t.Fatalf("%s refused %d honest states: %s", n, c, note)
		}
	}
}

// overlapsAny says whether any span of x overlaps any of y.
func overlapsAny(x, y []span) bool {
	return len(overlap(x, y)) > 0
}

// overlap is the addresses both x and y cover, as spans.
func overlap(x, y []span) []span {
	var out []span
	for _, a := range x {
		for _, b := range y {
			if s, e := max(a.start, b.start), min(a.end, b.end); s < e {
				out = append(out, span{s, e})
			}
		}
	}
	slices.SortFunc(out, compareSpan)
	return out
}
