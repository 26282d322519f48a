package ipam

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// vouchNet is six signing peers a..f on a /16 with automatic reclaim on,
// settled; "evil" is a member bound to no identity (the forger's own
// name).
func vouchNet(t *testing.T, noVouches bool) *simNet {
	t.Helper()
	names := []string{"a", "b", "c", "d", "e", "f"}
	net := newSimNet(41)
	net.ids = newTestIdentities(names...)
	net.forged = true
	net.noVouches = noVouches
	net.settleNew(t, "10.0.0.0/16", time.Minute, names...)
	net.rounds(3)
	for _, n := range names {
		net.nodes[n].Allocator.cfg.IsMember = func(name string) bool { return name != "nobody" }
	}
	return net
}

// TestVouchedReclaimRefusesForgery: with automatic reclaim on, a holder of
// the mesh key cannot move a live peer's space by writing a transfer, a
// reclaim's tombstone, an heir's claim or plain ownership beyond the
// reclaim's jump: a receiver takes a move of a leased peer's listed space
// only with the vouches of a majority of the voters, each in the voter's
// own signed info (docs/ipam.md, "Vouched reclaims"). The vouches of a
// minority, or vouches under the voters' names that they did not sign, do
// not do; a majority's do. Before every member reads vouches the rule
// spares leased peers as the previous release did.
func TestVouchedReclaimRefusesForgery(t *testing.T) {
	take := func(to string, dv uint64, dead string) func(*testing.T, *wireState) {
		return func(t *testing.T, w *wireState) {
			sp := spanOf(t, w.st.ring, "b")
			w.st.ring = w.st.ring.update(sp.start, sp.end, func(e entry) entry {
				return entry{Version: e.Version + dv, Owner: to, Dead: dead}
			})
		}
	}
	tomb := take("", reclaimVersionJump, "b")
	for _, tc := range []struct {
		name      string
		noVouches bool
		vouchers  []string // voters whose own signed info vouches for b
		unsigned  bool     // the vouchers' infos are forged: a copy with the vouch, unsigned
		forge     func(*testing.T, *wireState)
		want      string // refusal reason; "" when taken
	}{
		{name: "a transfer to the forger one version ahead", forge: take("evil", 1, ""), want: RejectUnreleased},
		{name: "a tombstone at the reclaim's jump", forge: tomb, want: RejectUnreleased},
		{name: "an heir's claim at the reclaim's jump", forge: take("evil", reclaimVersionJump+1, "b"), want: RejectUnreleased},
		{name: "plain ownership beyond the jump", forge: take("evil", reclaimVersionJump+2, ""), want: RejectUnreleased},
		{name: "a tombstone with the vouches of two of six voters", vouchers: []string{"c", "d"}, forge: tomb, want: RejectUnreleased},
		{name: "a tombstone with vouches the voters did not sign", vouchers: []string{"c", "d", "e", "f"}, unsigned: true, forge: tomb, want: RejectUnsigned},
		{name: "a tombstone with the vouches of four of six voters", vouchers: []string{"c", "d", "e", "f"}, forge: tomb},
		{name: "before every member reads vouches: spared as before", noVouches: true, forge: take("evil", 1, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := vouchNet(t, tc.noVouches)
			a := net.nodes["a"]
			if p := a.Allocator.st.peers["b"]; !p.Leased || !p.ListsOwned || p.ListsVouches == tc.noVouches {
				t.Fatalf("b's info: leased %v, lists its space %v, vouches %v", p.Leased, p.ListsOwned, p.ListsVouches)
			}
			w := stateOf(t, net.nodes["c"])
			w.sender = "evil"
			for _, y := range tc.vouchers {
				ya := net.nodes[y].Allocator
				ya.mu.Lock()
				vouchLocked(ya, "b")
				p := ya.st.peers[y]
				ya.mu.Unlock()
				if tc.unsigned {
					p = w.st.peers[y]
					p.Version++
					p.ListsVouches, p.Vouches = true, []vouch{{Name: "b", Runs: net.nodes[y].Allocator.st.ring.owned("b")}}
					p.Writer, p.Sig = "", nil
				}
				w.st.peers[y] = p
			}
			tc.forge(t, &w)
			before := a.Allocator.st.ring.owned("b")
			err := sendSigned(a, w)
			moved := fmt.Sprint(a.Allocator.st.ring.owned("b")) != fmt.Sprint(before)
			st := a.Status()
			if tc.want == "" {
				if err != nil || len(st.Rejected) != 0 || !moved {
					t.Fatalf("err %v, rejections %v, b's space moved %v: want taken", err, st.Rejected, moved)
				}
				return
			}
			if moved || !errors.Is(err, ErrRejected) || st.Rejected[tc.want] == 0 {
				t.Fatalf("err %v, rejections %v, b's space moved %v: want refused (%s)", err, st.Rejected, moved, tc.want)
			}
			if tc.want == RejectUnreleased && !slices.ContainsFunc(st.Problems, func(p string) bool {
				return strings.Contains(p, "moves space of b") && strings.Contains(p, "no majority of the voters vouches")
			}) {
				t.Fatalf("refusal not named: %q", st.Problems)
			}
			mustAlloc(t, a.Allocator, "pod2", "eth0")
		})
	}
}

// TestVouchedReclaimOfSilentPeer runs the whole course on the simulated
// mesh: b is cut off; each other peer vouches for it once it has been
// silent for ReclaimAfter, a peer tombstones b's space only with a reclaim
// quorum's vouches in its table (checked after every round, on every
// peer), and nobody refuses anything. Back, b takes the reclaim of its own
// space on the same vouches and releases it; the vouches stay for
// vouchKeepTicks after that and are then dropped everywhere.
func TestVouchedReclaimOfSilentPeer(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f"}
	net := newSimNet(42)
	net.ids = newTestIdentities(names...)
	net.settleNew(t, "10.0.0.0/16", 20*time.Second, names...)
	bSpace := net.nodes["a"].Allocator.st.ring.owned("b")
	if len(bSpace) == 0 {
		t.Fatal("b owns nothing")
	}
	noRefusals := func(when string) {
		t.Helper()
		for _, n := range slices.Sorted(maps.Keys(net.nodes)) {
			if r := net.nodes[n].Status().Rejected; len(r) != 0 {
				t.Fatalf("%s: %s refused %v: %q", when, n, r, net.nodes[n].Status().Problems)
			}
		}
	}
	net.part["b"] = 1
	reclaimed := false
	for round := 0; round < 200 && !reclaimed; round++ {
		net.round()
		reclaimed = true
		for _, n := range names[2:] {
			a := net.nodes[n].Allocator
			a.mu.Lock()
			for _, sp := range bSpace {
				if e := a.st.ring.get(sp.start); e.plainOf("b") {
					reclaimed = false
					continue
				}
				// Whatever moved b's space here came with a reclaim
				// quorum's vouches (or this peer wrote it on them).
				if k, _ := a.vouchesLocked(nil, "b", sp); k < a.reclaimQuorumLocked() {
					a.mu.Unlock()
					t.Fatalf("round %d: %s holds %+v on b's space with %d vouches (quorum %d)", round, n, a.st.ring.get(sp.start), k, a.reclaimQuorumLocked())
				}
			}
			a.mu.Unlock()
		}
	}
	if !reclaimed {
		t.Fatal("b's space was not reclaimed within 200 rounds")
	}
	noRefusals("after the reclaim")
	for _, n := range []string{"a", "c", "d", "e", "f"} {
		if !coversSpan(net.nodes[n].Allocator.st.peers[n].Vouches, bSpace[0]) {
			t.Fatalf("%s does not vouch for b: %v", n, net.nodes[n].Allocator.st.peers[n].Vouches)
		}
	}
	delete(net.part, "b")
	net.settle(t, 5)
	noRefusals("after b came back")
	b := net.nodes["b"].Allocator
	if p := b.st.peers["b"]; listsAnyRun(p.Owned, bSpace) {
		t.Fatalf("b still lists its reclaimed space: %v", p.Owned)
	}
	// The grace, then time for the voters' newer infos to spread.
	net.rounds(vouchKeepTicks + 60)
	noRefusals("at the end")
	for _, n := range names {
		a := net.nodes[n].Allocator
		for name, p := range a.st.peers {
			if len(p.Vouches) > 0 {
				t.Fatalf("%s still holds %s's vouches %v after vouchKeepTicks", n, name, p.Vouches)
			}
		}
	}
}

// TestVouchesSignedAndWellFormed: the vouches are under the voter's
// signature; a list beyond the bounds is refused as held; malformed lists
// are refused by the decoder.
func TestVouchesSignedAndWellFormed(t *testing.T) {
	p := peerInfo{Epoch: 1, Version: 2, ID: "x", ListsVouches: true, Vouches: []vouch{{"d", []span{{0, 4}}}}}
	q := p
	q.Vouches = []vouch{{"d", []span{{0, 5}}}}
	pre := mustPrefix("10.0.0.0/16")
	if slices.Equal(infoSigBytes(pre, "a", p), infoSigBytes(pre, "a", q)) {
		t.Fatal("a vouch's runs are not under the signature")
	}
	q.Vouches = []vouch{{"e", []span{{0, 4}}}}
	if slices.Equal(infoSigBytes(pre, "a", p), infoSigBytes(pre, "a", q)) {
		t.Fatal("a vouch's name is not under the signature")
	}
	r := p
	r.ListsVouches, r.Vouches = false, nil
	if slices.Equal(infoSigBytes(pre, "a", p), infoSigBytes(pre, "a", r)) {
		t.Fatal("the list is not under the signature")
	}

	for _, tc := range []struct {
		name    string
		vouches func() []vouch
	}{
		{"too many peers", func() []vouch {
			var vs []vouch
			for i := range maxVouches + 1 {
				vs = append(vs, vouch{fmt.Sprintf("gone%04d", i), []span{{0, 1}}})
			}
			return vs
		}},
		{"too many runs", func() []vouch {
			var runs []span
			for i := range uint64(maxVouchRuns + 1) {
				runs = append(runs, span{2 * i, 2*i + 1})
			}
			return []vouch{{"b", runs}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := newSimNet(34)
			a := settleTrio(t, net)
			w := forged(t, net)
			c := w.st.peers["c"]
			c.Version++
			c.ListsVouches, c.Vouches = true, tc.vouches()
			w.st.peers["c"] = c
			err := send(a, w)
			if n, _ := a.Allocator.refusals(RejectHeld); n != 1 || err != nil {
				t.Fatalf("%d held refusals, err %v", n, err)
			}
			if got := a.Allocator.st.peers["c"]; len(got.Vouches) > 0 {
				t.Fatalf("c's info merged with %d vouches", len(got.Vouches))
			}
		})
	}

	for _, tc := range []struct {
		name    string
		vouches []vouch
		want    string
	}{
		{"unsorted", []vouch{{"e", []span{{0, 1}}}, {"d", []span{{0, 1}}}}, "sorted"},
		{"a name twice", []vouch{{"d", []span{{0, 1}}}, {"d", []span{{2, 3}}}}, "sorted"},
		{"no name", []vouch{{"", []span{{0, 1}}}}, "without a name"},
		{"no runs", []vouch{{"d", nil}}, "without runs"},
		{"overlapping runs", []vouch{{"d", []span{{0, 4}, {2, 6}}}}, "owned span"},
		{"a run beyond the range", []vouch{{"d", []span{{1 << 16, 1<<16 + 1}}}}, "beyond the range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := newSimNet(34)
			a := settleTrio(t, net)
			w := forged(t, net)
			c := w.st.peers["c"]
			c.ListsVouches, c.Vouches = true, tc.vouches
			w.st.peers["c"] = c
			if _, err := decodeState(encodeState(w.prefix, w.sender, w.st)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decoded: %v, want an error naming %q", err, tc.want)
			}
			if err := send(a, w); !errors.Is(err, ErrCorruptState) {
				t.Fatalf("merged: %v", err)
			}
		})
	}
}

// TestUnionAndCoverSpans pins the span arithmetic vouches rest on.
func TestUnionAndCoverSpans(t *testing.T) {
	for _, tc := range []struct {
		name string
		x, y []span
		want []span
	}{
		{"disjoint", []span{{0, 2}}, []span{{4, 6}}, []span{{0, 2}, {4, 6}}},
		{"adjacent merge", []span{{0, 2}}, []span{{2, 4}}, []span{{0, 4}}},
		{"overlap", []span{{0, 5}}, []span{{3, 8}, {10, 12}}, []span{{0, 8}, {10, 12}}},
		{"contained", []span{{0, 10}}, []span{{3, 4}}, []span{{0, 10}}},
		{"empty", nil, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := unionSpans(tc.x, tc.y); !slices.Equal(got, tc.want) {
				t.Fatalf("unionSpans = %v, want %v", got, tc.want)
			}
		})
	}
	vs := []vouch{{"x", []span{{0, 4}}}, {"y", []span{{4, 8}, {10, 12}}}}
	for _, tc := range []struct {
		s    span
		want bool
	}{
		{span{0, 8}, true},   // two vouches together
		{span{2, 6}, true},   // across their border
		{span{6, 11}, false}, // a hole at 8..10
		{span{10, 12}, true},
		{span{11, 13}, false}, // beyond the end
	} {
		if got := coversSpan(vs, tc.s); got != tc.want {
			t.Errorf("coversSpan(%v) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

// TestVouchesFullNamed: a voter that vouches for maxVouches peers adds no
// more and says so in its status.
func TestVouchesFullNamed(t *testing.T) {
	net := newSimNet(43)
	a := settleTrio(t, net)
	al := a.Allocator
	al.mu.Lock()
	me := al.st.peers["a"]
	for i := range maxVouches {
		me.Vouches = append(me.Vouches, vouch{fmt.Sprintf("gone%04d", i), []span{{0, 1}}})
	}
	me.ListsVouches = true
	al.st.peers["a"] = me
	al.mu.Unlock()
	if !slices.ContainsFunc(a.Status().Problems, func(p string) bool {
		return strings.Contains(p, fmt.Sprintf("vouches for %d silent peers", maxVouches))
	}) {
		t.Fatalf("not named: %q", a.Status().Problems)
	}
}

// TestVouchesTurnedOnWhileCutOff: every peer turns the owned lists and
// vouches on while b is cut off, so the others never see b's info list its
// space or say it reads vouches. They still vouch for
// b and reclaim its space only on a reclaim quorum's vouches, and b, back,
// takes the reclaim of its space (it holds it to vouches, its own info
// being flagged). Before, the writer went by b's flag as it last saw it,
// tombstoned without vouches, and b refused its own reclaim for good
// (TestReclaimedPodKeepsTraffic, on real daemons).
func TestVouchesTurnedOnWhileCutOff(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	net := newSimNet(45)
	net.ids = newTestIdentities(names...)
	net.noVouches, net.noOwned = true, true
	net.settleNew(t, "10.0.0.0/16", 20*time.Second, names...)
	bSpace := net.nodes["a"].Allocator.st.ring.owned("b")
	net.part["b"] = 1
	net.noVouches, net.noOwned = false, false
	net.rounds(60)
	if p := net.nodes["a"].Allocator.st.peers["b"]; p.ListsVouches || p.ListsOwned {
		t.Fatal("a saw b's flags: the test does not test anything")
	}
	if p := net.nodes["b"].Allocator.st.peers["b"]; !p.ListsVouches || !p.ListsOwned {
		t.Fatal("b did not turn its lists on while cut off")
	}
	if e := net.nodes["a"].Allocator.st.ring.get(bSpace[0].start); e.plainOf("b") {
		t.Fatalf("b's space not reclaimed: %+v", e)
	}
	delete(net.part, "b")
	net.settle(t, 5)
	for _, n := range names {
		if r := net.nodes[n].Status().Rejected; len(r) != 0 {
			t.Fatalf("%s refused %v: %q", n, r, net.nodes[n].Status().Problems)
		}
	}
}
