package ipam

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hostileNet is three honest peers on a /16, settled, with a pod on a; the
// receiver a knows a, b, c and "evil" (the forger's own name) as members.
func hostileNet(t *testing.T) (*simNet, *simNode) {
	t.Helper()
	net := newSimNet(9)
	a := settleTrio(t, net)
	a.Allocator.cfg.IsMember = func(name string) bool {
		return name == "a" || name == "b" || name == "c" || name == "evil"
	}
	return net, a
}

// settleTrio adds peers a, b, c on a /16 to net, settles them, places a
// pod on a and returns a: the mesh the tests of forged states start from.
func settleTrio(t *testing.T, net *simNet) *simNode {
	t.Helper()
	for _, n := range []string{"a", "b", "c"} {
		net.add(t, n, "10.0.0.0/16", 3, 0)
	}
	net.settle(t, 5)
	a := net.nodes["a"]
	mustAlloc(t, a.Allocator, "pod1", "eth0")
	net.settle(t, 2)
	return a
}

// forged is c's current full state, to be altered and sent as "evil".
func forged(t *testing.T, net *simNet) wireState {
	t.Helper()
	w, err := decodeState(net.nodes["c"].LocalState())
	if err != nil {
		t.Fatal(err)
	}
	w.sender = "evil"
	return w
}

func send(a *simNode, w wireState) error {
	return a.HandleMessage("evil", append([]byte{msgState}, encodeState(w.prefix, w.sender, w.st)...))
}

// spanOf returns the first span name owns in r.
func spanOf(t *testing.T, r ring, name string) span {
	t.Helper()
	sp := r.owned(name)
	if len(sp) == 0 {
		t.Fatalf("%s owns nothing", name)
	}
	return sp[0]
}

// TestBoundsRefuseHostileStates: each forged state of a peer holding the
// mesh key is refused (in part or whole), counted under its reason, named
// in Status, and leaves the honest peers' ranges and infos as they were.
// Every case was accepted before the bounds existed.
func TestBoundsRefuseHostileStates(t *testing.T) {
	now := func(net *simNet) uint64 { return uint64(net.clock.Now().UnixMilli()) }
	cases := []struct {
		name   string
		reason string
		forge  func(t *testing.T, net *simNet, w *wireState)
		signed bool // the peers sign their infos (signedNet)
	}{
		{"live peer removed at the maximum epoch and version", RejectCounter, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			w.st.peers["b"] = peerInfo{Epoch: math.MaxUint64, Version: math.MaxUint64, ID: b.ID, Removed: true}
		}, false},
		{"epoch beyond its step", RejectCounter, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Epoch += maxEpochStep + 1
			b.Removed = true
			b.Held = nil
			w.st.peers["b"] = b
		}, false},
		{"version far ahead of the clock", RejectFuture, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version = now(net) + uint64(2*maxClockAhead/time.Millisecond)
			b.Held = nil
			w.st.peers["b"] = b
		}, false},
		{"another peer's range at the maximum version", RejectCounter, func(t *testing.T, net *simNet, w *wireState) {
			sp := spanOf(t, w.st.ring, "b")
			w.st.ring = w.st.ring.update(sp.start, sp.end, func(entry) entry { return entry{Version: math.MaxUint64, Owner: "evil"} })
		}, false},
		{"another peer's range beyond the ring step", RejectCounter, func(t *testing.T, net *simNet, w *wireState) {
			sp := spanOf(t, w.st.ring, "b")
			w.st.ring = w.st.ring.update(sp.start, sp.end, func(e entry) entry { return entry{Version: e.Version + maxRingStep + 1, Owner: "evil"} })
		}, false},
		{"whole-range Held under the forger's name", RejectHeld, func(t *testing.T, net *simNet, w *wireState) {
			held := make([]uint64, 0, w.st.ring.size)
			for off := range w.st.ring.size {
				held = append(held, off)
			}
			w.st.peers["evil"] = peerInfo{Version: now(net), Held: held}
		}, false},
		{"Held in another peer's space beyond the foreign bound", RejectHeld, func(t *testing.T, net *simNet, w *wireState) {
			sp := spanOf(t, w.st.ring, "b")
			var held []uint64
			for off := sp.start; off < sp.start+maxForeignHeld+1; off++ {
				held = append(held, off)
			}
			w.st.peers["evil"] = peerInfo{Version: now(net), Held: held}
		}, false},
		{"claim under a live node's name: b holds a's space", RejectHeld, func(t *testing.T, net *simNet, w *wireState) {
			sp := spanOf(t, w.st.ring, "a")
			b := w.st.peers["b"]
			b.Version++
			b.Held = nil
			for off := sp.start; off < sp.start+maxForeignHeld+1; off++ {
				b.Held = append(b.Held, off)
			}
			w.st.peers["b"] = b
		}, false},
		{"thousands of invented peer names", RejectUnknownPeer, func(t *testing.T, net *simNet, w *wireState) {
			for i := range 3000 {
				w.st.peers[fmt.Sprintf("fake-%d", i)] = peerInfo{Version: now(net)}
			}
		}, false},
		{"seed claiming more members than the table holds", RejectSeed, func(t *testing.T, net *simNet, w *wireState) {
			w.st.seed.Members = maxPeers + 1
		}, false},
		{"claim under a live node's name within the bounds, unsigned", RejectUnsigned, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version++
			b.Held = []uint64{spanOf(t, w.st.ring, "a").start + 7}
			b.Writer, b.Sig = "", nil
			w.st.peers["b"] = b
		}, true},
		{"claim under a live node's name within the bounds, signed by the forger", RejectBadSignature, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version++
			b.Held = []uint64{spanOf(t, w.st.ring, "a").start + 7}
			w.st.peers["b"] = resign("10.0.0.0/16", "b", "evil", b)
		}, true},
		{"live peer removed within the bounds, signed by the forger", RejectUnknownSigner, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			w.st.peers["b"] = resign("10.0.0.0/16", "b", "evil", peerInfo{Epoch: b.Epoch + 1, Version: b.Version + 1, ID: b.ID, Removed: true})
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var net *simNet
			var a *simNode
			if tc.signed {
				net, a = signedNet(t, newTestIdentities("a", "b", "c"))
			} else {
				net, a = hostileNet(t)
			}
			w := forged(t, net)
			if tc.signed {
				// a up to date with c, so that only the forgery is new.
				if err := a.MergeRemoteState(net.nodes["c"].LocalState()); err != nil {
					t.Fatal(err)
				}
			}
			before := a.Allocator.st.clone()
			tc.forge(t, net, &w)
			if tc.signed {
				_ = sendSigned(a, w)
			} else {
				_ = send(a, w)
			}
			st := a.Status()
			if st.Rejected[tc.reason] == 0 {
				t.Fatalf("not counted under %q: %v", tc.reason, st.Rejected)
			}
			named := 0
			for _, p := range st.Problems {
				if strings.Contains(p, "("+tc.reason+")") {
					named++
				}
			}
			if named != 1 {
				t.Fatalf("reason %q named %d times in problems %q", tc.reason, named, st.Problems)
			}
			after := a.Allocator.st
			for _, name := range []string{"a", "b", "c"} {
				if got, want := after.ring.owned(name), before.ring.owned(name); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s's space moved: %v, was %v", name, got, want)
				}
				if p := after.peers[name]; p.Removed || p.Epoch != before.peers[name].Epoch {
					t.Errorf("%s's info taken over: %+v", name, p)
				}
			}
			if len(after.peers) > 4 {
				t.Errorf("peer table grew to %d", len(after.peers))
			}
			// The receiver keeps working: the pod's address stays and a
			// new one is handed out at once.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if _, err := a.Allocate(ctx, "pod2", "eth0"); err != nil {
				t.Fatalf("Allocate after the forged state: %v", err)
			}
		})
	}
}

// TestBoundsOversizedRefusedBeforeDecoding: a state larger than
// MaxStateBytes is refused as oversized, whatever its content.
func TestBoundsOversizedRefusedBeforeDecoding(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(a *simNode, b []byte) error
	}{
		{"push/pull", func(a *simNode, b []byte) error { return a.MergeRemoteState(b) }},
		{"message", func(a *simNode, b []byte) error { return a.HandleMessage("evil", append([]byte{msgState}, b...)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, a := hostileNet(t)
			buf := make([]byte, MaxStateBytes+1)
			copy(buf, stateMagic)
			err := tc.send(a, buf)
			if !errors.Is(err, ErrRejected) {
				t.Fatalf("err = %v, want ErrRejected", err)
			}
			if st := a.Status(); st.Rejected[RejectOversized] != 1 || st.Rejected[RejectCorrupt] != 0 {
				t.Fatalf("rejections %v: want one oversized and no decoding", st.Rejected)
			}
		})
	}
}

// TestBoundsPeerTableFull: without a membership check every name counts
// as a member; the table still stops at maxPeers.
func TestBoundsPeerTableFull(t *testing.T) {
	net, a := hostileNet(t)
	a.Allocator.cfg.IsMember = nil
	w := forged(t, net)
	for i := range 2 * maxPeers {
		w.st.peers[fmt.Sprintf("fake-%04d", i)] = peerInfo{Version: 1}
	}
	_ = send(a, w)
	if n := len(a.Allocator.st.peers); n != maxPeers {
		t.Fatalf("peer table holds %d, want the bound %d", n, maxPeers)
	}
	if a.Status().Rejected[RejectPeerTable] != 1 {
		t.Fatalf("rejections: %v", a.Status().Rejected)
	}
}

// TestBoundsTombstonesDoNotFillTheTable: peers removed for good (removed,
// holding and owning nothing) stay as tombstones but do not count towards
// maxPeers, so a mesh whose nodes come and go keeps admitting new ones;
// invented removed names without Held are refused as unknown.
func TestBoundsTombstonesDoNotFillTheTable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		removed  peerInfo
		member   bool
		wantNew  bool
		wantRule string
	}{
		{"former members removed for good", peerInfo{Epoch: 1, Version: 1, Removed: true}, true, true, ""},
		{"removed names never heard of, skipped without a word", peerInfo{Epoch: 1, Version: 1, Removed: true}, false, true, ""},
		{"invented names", peerInfo{Epoch: 1, Version: 1}, false, true, RejectUnknownPeer},
		{"former members still holding addresses", peerInfo{Epoch: 1, Version: 1, Removed: true, Held: []uint64{7}}, true, false, RejectPeerTable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net, a := hostileNet(t)
			a.Allocator.cfg.IsMember = func(name string) bool { return tc.member || name != "newcomer" && !strings.HasPrefix(name, "old-") }
			w := forged(t, net)
			for i := range maxPeers {
				w.st.peers[fmt.Sprintf("old-%04d", i)] = tc.removed
			}
			_ = send(a, w)
			a.Allocator.cfg.IsMember = func(string) bool { return true }
			w = forged(t, net)
			w.st.peers["newcomer"] = peerInfo{Version: uint64(net.clock.Now().UnixMilli())}
			_ = send(a, w)
			if _, ok := a.Allocator.st.peers["newcomer"]; ok != tc.wantNew {
				t.Fatalf("newcomer admitted = %v with %d peers known (rejections %v)", ok, len(a.Allocator.st.peers), a.Status().Rejected)
			}
			if got := a.Status().Rejected; tc.wantRule == "" && len(got) != 0 || tc.wantRule != "" && got[tc.wantRule] == 0 {
				t.Fatalf("rejections %v, want %q", got, tc.wantRule)
			}
		})
	}
}

// TestBoundsProblemsStayBounded: states of another cluster range from many
// invented senders give one problem line, not one per sender.
func TestBoundsProblemsStayBounded(t *testing.T) {
	_, a := hostileNet(t)
	for i := range 1000 {
		st := newState(256)
		_ = a.MergeRemoteState(encodeState(mustPrefix("10.9.0.0/24"), fmt.Sprintf("s%d", i), st))
	}
	st := a.Status()
	if len(st.Problems) != 1 || st.Rejected[RejectRange] != 1000 {
		t.Fatalf("problems %d (%q), rejections %v", len(st.Problems), st.Problems, st.Rejected)
	}
}

// TestRmpeerWinsOverForgedEntries: an operator's rmpeer beats what a
// forger wrote: the forged maximum never gets in, and what gets in is
// within a step of the truth, so the removal's +1 wins without wrapping.
func TestRmpeerWinsOverForgedEntries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		epoch uint64
		ver   uint64
	}{
		{"at the maximum", math.MaxUint64, math.MaxUint64},
		{"at the edge of the bounds", maxEpochStep, maxRingStep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net, a := hostileNet(t)
			w := forged(t, net)
			e := w.st.peers["evil"]
			e.Epoch, e.Version = tc.epoch, uint64(net.clock.Now().UnixMilli())
			w.st.peers["evil"] = e
			sp := spanOf(t, w.st.ring, "b")
			w.st.ring = w.st.ring.update(sp.start, sp.end, func(en entry) entry {
				return entry{Version: min(tc.ver, en.Version+tc.ver), Owner: "evil"}
			})
			_ = send(a, w)
			if _, err := a.RemovePeer("evil"); err != nil && !errors.Is(err, errUnknownPeer) {
				t.Fatal(err)
			}
			_ = send(a, w) // the forger repeats itself
			if p, ok := a.Allocator.st.peers["evil"]; ok && !p.Removed {
				t.Fatalf("the forger's info won over rmpeer: %+v", p)
			}
			for _, s := range a.Allocator.st.ring.segs {
				if s.e.Owner == "evil" {
					t.Fatalf("the forger still owns %d: %+v", s.start, s.e)
				}
			}
		})
	}
}

// TestBoundsAcceptHonestStates: the bounds refuse nothing in an honest
// simulation with restarts (a restart puts versions up to versionStep
// ahead of the clock).
func TestBoundsAcceptHonestStates(t *testing.T) {
	net, _ := hostileNet(t)
	for range 5 {
		net.restart(t, "b")
		net.settle(t, 3)
	}
	for name, n := range net.nodes {
		if r := n.Status().Rejected; len(r) != 0 {
			t.Fatalf("%s refused honest input: %v", name, r)
		}
	}
}

// TestFloodKeepsAllocateFast: forged states as large as accepted, merged
// in a loop, leave Allocate fast on the receiver (a generous bound: the
// issue measured seconds per merge of such a state before the bounds).
func TestFloodKeepsAllocateFast(t *testing.T) {
	net := newSimNet(9)
	for _, n := range []string{"a", "b", "c"} {
		net.add(t, n, "10.32.0.0/12", 3, 0)
	}
	net.settle(t, 5)
	a := net.nodes["a"]
	a.Allocator.cfg.IsMember = func(name string) bool { return name != "" && !strings.HasPrefix(name, "fake-") }
	w := forged(t, net)
	// The forger "holds" nearly the whole /12 (as many addresses as fit
	// under MaxStateBytes), and 1000 invented peers hold 64 each.
	held := make([]uint64, 0, 800_000)
	for off := range uint64(cap(held)) {
		held = append(held, off)
	}
	w.st.peers["evil"] = peerInfo{Version: uint64(net.clock.Now().UnixMilli()), Held: held}
	for i := range 1000 {
		h := make([]uint64, 0, 64)
		for off := range uint64(64) {
			h = append(h, off*1000+uint64(i%1000))
		}
		w.st.peers[fmt.Sprintf("fake-%d", i)] = peerInfo{Version: uint64(i), Held: h}
	}
	buf := append([]byte{msgState}, encodeState(w.prefix, w.sender, w.st)...)
	if len(buf) > MaxStateBytes {
		t.Fatalf("flood message of %d bytes would be refused unread; make it smaller", len(buf))
	}
	var merges atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				_ = a.HandleMessage("evil", buf)
				merges.Add(1)
			}
		}
	}()
	var worst time.Duration
	n := 0
	// Bounded by time, not count: an allocation costs a journal record,
	// far less than a merge of the flood's megabyte.
	for begin := time.Now(); time.Since(begin) < time.Minute && (n < 50 || merges.Load() < 20); n++ {
		start := time.Now()
		mustAlloc(t, a.Allocator, fmt.Sprintf("flood-%d", n), "eth0")
		worst = max(worst, time.Since(start))
	}
	close(stop)
	<-done
	if merges.Load() < 20 || a.Status().Rejected[RejectUnknownPeer] == 0 || a.Status().Rejected[RejectHeld] == 0 {
		t.Fatalf("the flood merged %d states during %d allocations", merges.Load(), n)
	}
	if worst > 500*time.Millisecond {
		t.Fatalf("slowest Allocate during the flood took %v", worst)
	}
	t.Logf("slowest Allocate during the flood: %v", worst)
}

// TestWireRoundTrip: the exported form of the wire state encodes to the
// very bytes it was decoded from.
func TestWireRoundTrip(t *testing.T) {
	net, a := hostileNet(t)
	_ = net
	b := a.LocalState()
	w, err := DecodeWire(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Encode(); string(got) != string(b) {
		t.Fatalf("round trip differs: %d bytes, was %d", len(got), len(b))
	}
	if m := w.Message(); m[0] != msgState || string(m[1:]) != string(b) {
		t.Fatal("Message is not msgState + the state")
	}
}

// TestClaimUnderOwnNameReasserted: a forged info within the bounds under a
// live peer's name is overridden by that peer at once: it republishes its
// own info above the forged version, with its real Held list.
func TestClaimUnderOwnNameReasserted(t *testing.T) {
	net, a := hostileNet(t)
	real := a.Allocator.st.peers["a"]
	w := forged(t, net)
	f := w.st.peers["a"]
	f.Version = real.Version + 1000
	f.Held = nil
	w.st.peers["a"] = f
	if err := send(a, w); err != nil {
		t.Fatal(err)
	}
	got := a.Allocator.st.peers["a"]
	if got.Version <= f.Version || !slices.Equal(got.Held, real.Held) {
		t.Fatalf("a's info after the forgery: version %d (forged %d), held %v (real %v)", got.Version, f.Version, got.Held, real.Held)
	}
}

// TestBeyondNeverOverflows: the step check holds at the edges of uint64.
func TestBeyondNeverOverflows(t *testing.T) {
	for _, tc := range []struct {
		name          string
		v, base, step uint64
		want          bool
	}{
		{"within the step", 10, 5, 5, false},
		{"one past the step", 11, 5, 5, true},
		{"behind the base", 3, 5, 5, false},
		{"base near the maximum", math.MaxUint64 - 1, math.MaxUint64 - 2, 5, true},
		{"at the ceiling", maxCounter, maxCounter - 1, 5, true},
		{"base beyond the ceiling, v small", 1, math.MaxUint64, 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := beyond(tc.v, tc.base, tc.step); got != tc.want {
				t.Fatalf("beyond(%d, %d, %d) = %v", tc.v, tc.base, tc.step, got)
			}
		})
	}
}

// TestReclaimJumpWithinRingStep: ring versions of a long-lived mesh grow
// by reclaimVersionJump per automatic reclaim. A peer that missed up to
// maxRingStep/reclaimVersionJump - 1 reclaims of an address still merges
// the ring, and a joiner (no seed yet) merges a ring whose versions lie
// far beyond one step from zero; only maxForeignRingVersion bounds it.
func TestReclaimJumpWithinRingStep(t *testing.T) {
	missed := uint64(maxRingStep/reclaimVersionJump - 1)
	if missed < 8 {
		t.Fatalf("reclaimVersionJump %d leaves room for only %d unseen reclaims under maxRingStep %d", reclaimVersionJump, missed, maxRingStep)
	}
	bump := func(w *wireState, by uint64) {
		for i := range w.st.ring.segs {
			w.st.ring.segs[i].e.Version += by
		}
	}
	joiner := func(t *testing.T, _ *simNet) *simNode {
		j := newSimNet(10)
		j.add(t, "j", "10.0.0.0/16", 3, 0) // waits for 3 members: no seed
		return j.nodes["j"]
	}
	cases := []struct {
		name   string
		to     func(t *testing.T, net *simNet) *simNode
		by     uint64
		refuse bool
	}{
		{"peer that missed reclaims", func(t *testing.T, net *simNet) *simNode { return net.nodes["a"] }, missed * reclaimVersionJump, false},
		{"peer that missed more than a step", func(t *testing.T, net *simNet) *simNode { return net.nodes["a"] }, maxRingStep + 1, true},
		{"joiner, ring far past one step", joiner, 64 * maxRingStep, false},
		{"joiner, ring at the foreign bound", joiner, maxForeignRingVersion, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			net := newSimNet(9)
			for _, n := range []string{"a", "b", "c"} {
				net.add(t, n, "10.0.0.0/16", 3, 0)
			}
			net.settle(t, 5)
			w := forged(t, net)
			w.sender = "c"
			bump(&w, tc.by)
			to := tc.to(t, net)
			err := to.HandleMessage("c", append([]byte{msgState}, encodeState(w.prefix, w.sender, w.st)...))
			st := to.Status()
			if tc.refuse {
				if !errors.Is(err, ErrRejected) || st.Rejected[RejectCounter] == 0 {
					t.Fatalf("accepted (err %v, rejected %v)", err, st.Rejected)
				}
				return
			}
			if err != nil || st.Rejected[RejectCounter] != 0 {
				t.Fatalf("refused: %v (rejected %v)", err, st.Rejected)
			}
			to.Allocator.mu.Lock()
			defer to.Allocator.mu.Unlock()
			if got := to.Allocator.st.ring.segs[0].e.Version; got < tc.by {
				t.Fatalf("ring not merged: version %d at offset 0, want at least %d", got, tc.by)
			}
		})
	}
}
