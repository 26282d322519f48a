package ipam

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestJoinEntryIsASemilattice checks joinEntry on every triple of a small
// universe of entries (plain owners, claims, tombstones, contested, of two
// versions): commutative, associative and idempotent, so every replica
// ends with the same ring whatever the order of merges.
func TestJoinEntryIsASemilattice(t *testing.T) {
	var es []entry
	for _, v := range []uint64{0, 1, 2} {
		es = append(es, entry{Version: v}) // unseeded at 0, contested above
		for _, o := range []string{"a", "b"} {
			es = append(es, entry{Version: v, Owner: o})
			for _, d := range []string{"x", "y"} {
				es = append(es, entry{Version: v, Owner: o, Dead: d})
			}
		}
		for _, d := range []string{"x", "y"} {
			es = append(es, entry{Version: v, Dead: d})
		}
	}
	for _, a := range es {
		if got := joinEntry(a, a); got != a {
			t.Fatalf("join(%+v, itself) = %+v", a, got)
		}
		for _, b := range es {
			ab, ba := joinEntry(a, b), joinEntry(b, a)
			if ab != ba {
				t.Fatalf("join(%+v, %+v) = %+v but join(b, a) = %+v", a, b, ab, ba)
			}
			if a.Version != b.Version && ab != a && ab != b {
				t.Fatalf("join of versions %d and %d gave %+v", a.Version, b.Version, ab)
			}
			for _, c := range es {
				if l, r := joinEntry(ab, c), joinEntry(a, joinEntry(b, c)); l != r {
					t.Fatalf("join not associative on %+v, %+v, %+v: %+v vs %+v", a, b, c, l, r)
				}
			}
		}
	}
	// What the rule is for: two different claims of one version merge
	// into contested, which no later claim of that version undoes, and
	// which a plain owner of that version (a confirmation) still beats.
	c1, c2 := entry{Version: 5, Owner: "a", Dead: "x"}, entry{Version: 5, Owner: "b", Dead: "x"}
	k := joinEntry(c1, c2)
	if !k.isContested() || k.Version != 5 {
		t.Fatalf("two claims merged into %+v, want contested at 5", k)
	}
	if got := joinEntry(k, c1); got != k {
		t.Fatalf("a claim undid contested: %+v", got)
	}
	if p := (entry{Version: 5, Owner: "a"}); joinEntry(k, p) != p {
		t.Fatalf("contested beat a plain owner of its version")
	}
	// joinRing agrees with joinEntry address by address.
	rng := rand.New(rand.NewPCG(7, 7))
	for range 200 {
		x, y := randomRing(rng, es), randomRing(rng, es)
		j := joinRing(x, y)
		for off := uint64(0); off < 16; off++ {
			if got, want := j.get(off), joinEntry(x.get(off), y.get(off)); got != want {
				t.Fatalf("joinRing at %d: %+v, want %+v", off, got, want)
			}
		}
		if !joinRing(x, y).equal(joinRing(y, x)) {
			t.Fatal("joinRing not commutative")
		}
	}
}

func randomRing(rng *rand.Rand, es []entry) ring {
	r := newRing(16)
	for range 4 {
		a, b := rng.Uint64N(16), rng.Uint64N(16)
		if a > b {
			a, b = b, a
		}
		e := es[rng.IntN(len(es))]
		r = r.update(a, b+1, func(entry) entry { return e })
	}
	return r
}

// heirsInTurn is a settled mesh of seven peers with automatic reclaim on,
// everyone cut off from everyone, in the state the "heir reclaimed in
// turn" gap needs (docs/ipam.md): b's space tombstoned everywhere; h1, the
// owner of the range below b's, has claimed it; h2, the owner of the range
// below h1's, has tombstoned h1 (not knowing of h1's claim) and claims
// h1's range and b's together, at the same version as h1's claim of b's.
// ys are the four others, which hold only b's tombstone.
type heirsInTurn struct {
	s         *simNet
	b, h1, h2 string
	ys        []string
	r         span // b's range
}

func newHeirsInTurn(t *testing.T, seed uint64) *heirsInTurn {
	t.Helper()
	names := []string{"p0", "p1", "p2", "p3", "p4", "p5", "p6"}
	s := settledSim(t, seed, "10.0.0.0/24", 8*time.Second, names...)
	s.rounds(5)
	first := s.nodes["p0"].Allocator
	first.mu.Lock()
	rg := first.st.ring.clone()
	first.mu.Unlock()
	// Three consecutive single-segment ranges h2, h1, b, with h2's name
	// above h1's: the order in which the previous release's merge let
	// h2's claim win the tie with h1's.
	h := &heirsInTurn{s: s}
	for i := range rg.segs {
		n := len(rg.segs)
		e2, e1, eb := rg.segs[(i+n-2)%n].e, rg.segs[(i+n-1)%n].e, rg.segs[i].e
		if e2.Owner > e1.Owner && e1.Owner != eb.Owner && e2.Owner != eb.Owner &&
			len(rg.owned(eb.Owner)) == 1 && len(rg.owned(e1.Owner)) == 1 && rg.segs[i].start > 0 {
			h.b, h.h1, h.h2 = eb.Owner, e1.Owner, e2.Owner
			h.r = span{rg.segs[i].start, rg.end(i)}
			break
		}
	}
	if h.b == "" {
		t.Fatalf("no layout h2 > h1 > b in the settled ring: %+v", rg.segs)
	}
	for _, n := range names {
		if n != h.b && n != h.h1 && n != h.h2 {
			h.ys = append(h.ys, n)
		}
		s.part[n] = len(s.part) + 1
	}
	s.updateMembers()
	s.queue = nil
	tomb := func(on, victim string) {
		a := s.nodes[on].Allocator
		a.mu.Lock()
		a.st.ring, _ = a.st.ring.rewrite(
			func(e entry) bool { return e.Owner == victim },
			func(e entry) entry { return entry{Version: e.Version + reclaimVersionJump, Dead: victim} })
		a.mu.Unlock()
	}
	// Every reclaim rests on the vouches of a majority (vouch.go): each
	// peer found b silent, and h2 and the others found h1 silent too
	// (the others had not tombstoned it themselves yet). Their infos
	// reached each other before the partition.
	for _, n := range names {
		a := s.nodes[n].Allocator
		a.mu.Lock()
		if n != h.b {
			vouchLocked(a, h.b)
		}
		if n != h.b && n != h.h1 {
			vouchLocked(a, h.h1)
		}
		a.mu.Unlock()
	}
	for _, n := range names {
		a := s.nodes[n].Allocator
		a.mu.Lock()
		for _, m := range names {
			b := s.nodes[m].Allocator
			if b != a {
				b.mu.Lock()
				a.st.peers[m] = b.st.peers[m]
				b.mu.Unlock()
			}
		}
		a.mu.Unlock()
	}
	for _, n := range names {
		if n != h.b {
			tomb(n, h.b)
		}
	}
	tomb(h.h2, h.h1)
	s.kill(h.b) // b is gone: its host died, which is why it was reclaimed
	s.nodes[h.h1].Tick()
	s.nodes[h.h2].Tick()
	for _, who := range []string{h.h1, h.h2} {
		if e := h.entry(who); !e.isClaim() || e.Owner != who || e.Dead != h.b {
			t.Fatalf("%s holds %+v on b's range, want its claim (b=%s h1=%s h2=%s)", who, e, h.b, h.h1, h.h2)
		}
	}
	if c1, c2 := h.entry(h.h1), h.entry(h.h2); c1.Version != c2.Version {
		t.Fatalf("the claims are at versions %d and %d, want one", c1.Version, c2.Version)
	}
	return h
}

// entry is b's range's entry in on's ring.
func (h *heirsInTurn) entry(on string) entry {
	a := h.s.nodes[on].Allocator
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.ring.get(h.r.start)
}

// hand gives from's current state to to, as a broadcast or push/pull would.
func (h *heirsInTurn) hand(t *testing.T, from, to string) {
	t.Helper()
	if err := h.s.nodes[to].MergeRemoteState(h.s.nodes[from].LocalState()); err != nil {
		t.Fatalf("%s merging %s's state: %v", to, from, err)
	}
}

// owns says whether who may allocate in b's range in its own view.
func (h *heirsInTurn) owns(who string) bool {
	e := h.entry(who)
	return e.Owner == who && e.Dead == ""
}

// An heir reclaimed in turn (the known gap of the previous release): h1
// and h2 both claim b's space at one version, and each counts the four
// others' answers. Two orders broke it:
//
//   - h1 first: the others hold h1's claim, h1 confirms; then they hear
//     h2's claim and answer h2. Each answer was at or above the
//     tombstone's version (h2's claim won the tie by name), so h2 counted
//     them all. Now each merges the second claim into contested, and h2
//     counts none.
//   - h2 first, from states that hold only the tombstone (a push/pull
//     before h2's claim reached them): h2 counted them, and h1 then
//     counted the same peers once they held its claim. Now only a state
//     that holds the claim itself counts.
//
// And a claim of space whose dead peer an authority (or an operator) has
// removed was confirmed at once, also with reclaim on. Each way both
// heirs owned b's space. Now only h1 does; once the
// partitions heal every ring agrees on h1 and nothing is handed out twice.
func TestRegressionHeirReclaimedInTurn(t *testing.T) {
	for _, tc := range []struct {
		name string
		seed uint64
		run  func(t *testing.T, h *heirsInTurn)
	}{
		{"second claim after the first confirmed", 170, func(t *testing.T, h *heirsInTurn) {
			h.askAll(t, h.h1)
			if !h.owns(h.h1) {
				t.Fatalf("h1 %s did not confirm its claim held by all four others: %+v (%+v)", h.h1, h.entry(h.h1), h.s.nodes[h.h1].Status())
			}
			h.askAll(t, h.h2)
			for _, y := range h.ys {
				if e := h.entry(y); !e.isContested() {
					t.Errorf("%s holds %+v after both claims, want contested", y, e)
				}
			}
		}},
		{"states that hold only the tombstone", 172, func(t *testing.T, h *heirsInTurn) {
			for _, y := range h.ys {
				h.hand(t, y, h.h2)
			}
			h.s.nodes[h.h2].Tick()
			if h.owns(h.h2) {
				t.Errorf("h2 %s confirmed on states that never held its claim", h.h2)
			}
			h.askAll(t, h.h1)
			if !h.owns(h.h1) {
				t.Fatalf("h1 %s did not confirm its claim held by all four others: %+v", h.h1, h.entry(h.h1))
			}
		}},
		// With reclaim on, a claim of a removed peer's space waits for
		// its quorum too: before, h2 confirmed at once.
		{"the dead peer removed by an authority", 173, func(t *testing.T, h *heirsInTurn) {
			h.askAll(t, h.h1)
			if _, err := h.s.nodes[h.h2].RemovePeerAuthoritative(h.b); err != nil {
				t.Fatal(err)
			}
			h.s.nodes[h.h2].Tick()
			if h.owns(h.h2) {
				t.Errorf("h2 %s confirmed its claim of removed b's space with no peer holding it", h.h2)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHeirsInTurn(t, tc.seed)
			s := h.s
			tc.run(t, h)
			if h.owns(h.h1) && h.owns(h.h2) {
				t.Fatalf("both heirs own b's range %v: h1 %s and h2 %s", h.r, h.h1, h.h2)
			}
			// Heal and let h1's confirmation spread.
			for _, n := range append([]string{h.h1, h.h2}, h.ys...) {
				s.part[n] = 0
			}
			s.updateMembers()
			s.settle(t, 10)
			for n := range s.nodes {
				if e := h.entry(n); e.Owner != h.h1 || e.Dead != "" {
					t.Errorf("%s holds %+v on b's range, want h1 %s's confirmation", n, e, h.h1)
				}
			}
			for _, n := range append([]string{h.h1, h.h2}, h.ys...) {
				s.fillAll(t, n, "fill-"+n, 5)
			}
			s.checkUnique(t, tc.seed, 0)
		})
	}
}

// askAll hands heir's state to each of the others and theirs back, as an
// echo request and its answers do, then lets heir act on the answers.
func (h *heirsInTurn) askAll(t *testing.T, heir string) {
	t.Helper()
	for _, y := range h.ys {
		h.hand(t, heir, y)
		h.hand(t, y, heir)
	}
	h.s.nodes[heir].Tick()
}

// When neither heir gets a quorum (the others heard the two claims in
// opposite orders), b's range stays contested everywhere: nobody
// allocates there, status says why, and after ReclaimAfter the owner of
// the address below claims it again with a jump, has it held by a reclaim
// quorum and uses it. Nothing is handed out twice on the way.
func TestContestedSpaceIsClaimedAgain(t *testing.T) {
	h := newHeirsInTurn(t, 171)
	s := h.s
	for i, y := range h.ys {
		order := []string{h.h1, h.h2}
		if i%2 == 1 {
			order = []string{h.h2, h.h1}
		}
		for _, from := range order {
			h.hand(t, from, y)
			h.hand(t, y, from)
		}
	}
	s.nodes[h.h1].Tick()
	s.nodes[h.h2].Tick()
	if h.owns(h.h1) || h.owns(h.h2) {
		t.Fatalf("an heir confirmed with two of four others holding its claim: h1 %+v, h2 %+v", h.entry(h.h1), h.entry(h.h2))
	}
	for _, n := range append([]string{h.h1, h.h2}, h.ys...) {
		s.part[n] = 0
	}
	s.updateMembers()
	var k entry
	sawProblem := false
	for round := 0; ; round++ {
		if round == 60 {
			t.Fatalf("b's range %v not owned 60 s after the heal: %+v", h.r, h.entry(h.ys[0]))
		}
		s.round()
		e := h.entry(h.ys[0])
		if e.isContested() {
			k = e
			sawProblem = sawProblem || slices.ContainsFunc(s.nodes[h.ys[0]].Status().Problems, func(p string) bool {
				return strings.Contains(p, "contested")
			})
			continue
		}
		if e.Owner != "" && e.Dead == "" && s.ringsEqual() == "" {
			if k.Version == 0 {
				t.Fatalf("b's range was never contested after the heal: %+v", e)
			}
			if e.Version <= k.Version+reclaimVersionJump {
				t.Fatalf("b's range went from %+v to %+v: want a claim a jump above contested, then its confirmation", k, e)
			}
			t.Logf("contested at %d, owned by %s at %d after %d s", k.Version, e.Owner, e.Version, round+1)
			break
		}
	}
	if !sawProblem {
		t.Error("no node reported the contested space as a problem")
	}
	for _, n := range append([]string{h.h1, h.h2}, h.ys...) {
		s.fillAll(t, n, "fill-"+n, 5)
	}
	s.checkUnique(t, 171, 0)
	if got := s.unowned(); got != "" {
		t.Errorf("after the reclaim: %s", got)
	}
}

// TestAllContestedRingClaimedBack: in a ring where every run is contested
// nobody is the heir of any run (the heir is the owner of the address
// below, and there is none), so by the heir rule alone nothing would ever
// change and no peer could allocate again. The first live voter by name
// claims the runs instead, after ReclaimAfter as any contested run (at
// once with reclaim off), a reclaim quorum confirms, space flows to the
// others again, and no address is handed out twice. Seen in the
// simulation: seed 21 of TestSimulationAutoReclaim, run with a change of
// the silent clock, ended with the whole ring contested.
func TestAllContestedRingClaimedBack(t *testing.T) {
	for _, reclaim := range []time.Duration{0, 20 * time.Second} {
		t.Run(fmt.Sprintf("reclaim=%v", reclaim), func(t *testing.T) {
			names := []string{"a", "b", "c", "d", "e"}
			s := settledSim(t, 11, "10.0.0.0/26", reclaim, names...)
			for _, n := range names {
				for i := range 2 {
					s.allocEventually(t, n, fmt.Sprintf("%s-old-%d", n, i), 20)
				}
			}
			s.rounds(5)
			// Every node's ring turns wholly contested, above every
			// version in flight.
			for _, n := range names {
				a := s.nodes[n].Allocator
				a.mu.Lock()
				a.st.ring, _ = a.st.ring.rewrite(func(entry) bool { return true }, func(e entry) entry { return contested(e.Version + reclaimVersionJump) })
				a.afterRingChangeLocked()
				if err := a.saveLocked(); err != nil {
					t.Fatal(err)
				}
				a.mu.Unlock()
			}
			hasOwner := func() bool {
				for _, n := range names {
					if s.nodes[n].Allocator.st.ring.hasOwner() {
						return true
					}
				}
				return false
			}
			if reclaim > 0 {
				s.rounds(int(reclaim/time.Second) - 5)
				if hasOwner() {
					t.Fatalf("a contested run was claimed before it stayed contested for %v", reclaim)
				}
			}
			s.rounds(int(reclaim/time.Second) + 20)
			for _, r := range s.nodes["e"].Status().Ranges {
				if r.Owner == "" {
					t.Fatalf("%s has no owner %v after the ring turned contested: %q", r.CIDR, reclaim+20*time.Second, s.nodes["e"].Status().Problems)
				}
			}
			s.checkUnique(t, 11, 0)
			// Every node allocates again, new pods beside the old ones.
			for _, n := range names {
				for i := range 2 {
					s.allocEventually(t, n, fmt.Sprintf("%s-new-%d", n, i), 60)
				}
			}
			s.settle(t, 5)
			s.checkUnique(t, 11, 1)
		})
	}
}
