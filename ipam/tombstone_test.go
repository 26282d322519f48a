package ipam

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// holders names the live peers whose table holds name's info.
func (s *simNet) holders(name string) []string {
	var out []string
	for _, n := range slices.Sorted(maps.Keys(s.nodes)) {
		a := s.nodes[n].Allocator
		a.mu.Lock()
		if _, ok := a.st.peers[name]; ok {
			out = append(out, n)
		}
		a.mu.Unlock()
	}
	return out
}

// acksOf is name's current list of acknowledged removals, in its own view.
func (s *simNet) acksOf(name string) []ack {
	a := s.nodes[name].Allocator
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.st.peers[name].Acks)
}

// removeDead kills victim and has the first other peer remove it
// (rmpeer), then settles: every live peer holds the tombstone.
func (s *simNet) removeDead(t *testing.T, victim string) ack {
	t.Helper()
	s.kill(victim)
	s.removeGone(t, 0)
	s.settle(t, 3)
	var k ack
	for _, n := range slices.Sorted(maps.Keys(s.nodes)) {
		a := s.nodes[n].Allocator
		a.mu.Lock()
		p, ok := a.st.peers[victim]
		a.mu.Unlock()
		if !ok || !p.Removed {
			t.Fatalf("%s's info of %s after the rmpeer: %+v (held %v)", n, victim, p, ok)
		}
		k = ack{victim, p.Epoch}
	}
	return k
}

// TestTombstoneDropped: once every peer lists a removed peer's tombstone
// among its acknowledgements for dropGraceTicks, every peer drops it, and
// the state shrinks. Neither a state that still carries the tombstone nor
// one that carries the peer's older info brings the name back, also after
// a restart (docs/ipam.md, "Dropping tombstones").
func TestTombstoneDropped(t *testing.T) {
	net := newSimNet(31)
	net.ids = newTestIdentities("a", "b", "c", "d")
	for _, n := range []string{"a", "b", "c", "d"} {
		net.add(t, n, "10.0.0.0/16", 4, 0)
	}
	net.settle(t, 5)
	mustAlloc(t, net.nodes["a"].Allocator, "pod1", "eth0")
	net.settle(t, 2)
	old := stateOf(t, net.nodes["b"]) // d alive: its own info, unremoved
	k := net.removeDead(t, "d")
	for _, n := range []string{"a", "b", "c"} {
		if acks := net.acksOf(n); !slices.Contains(acks, k) {
			t.Fatalf("%s acknowledges %v, want %v among them", n, acks, k)
		}
		if p := net.nodes[n].Allocator.st.peers[n]; !p.ListsAcks || len(p.Sig) == 0 {
			t.Fatalf("%s's info lists acknowledgements %v, signed %v", n, p.ListsAcks, len(p.Sig) > 0)
		}
	}
	withTombstone := stateOf(t, net.nodes["b"])
	size := len(net.nodes["a"].LocalState())
	if st := net.nodes["a"].Status(); st.Tombstones != 1 || !st.TombstonesAcked {
		t.Fatalf("status before the drop: %d tombstones, acked %v", st.Tombstones, st.TombstonesAcked)
	}
	net.rounds(dropGraceTicks / 2)
	if got := net.holders("d"); len(got) != 3 {
		t.Fatalf("dropped before the grace: held by %v", got)
	}
	net.rounds(dropGraceTicks)
	if got := net.holders("d"); len(got) != 0 {
		t.Fatalf("tombstone of d still held by %v", got)
	}
	if g := net.ghost(); g != "" {
		t.Fatal(g)
	}
	a := net.nodes["a"]
	if st := a.Status(); st.Tombstones != 0 || st.TombstonesDropped != 1 {
		t.Fatalf("status after the drop: %d tombstones, %d dropped", st.Tombstones, st.TombstonesDropped)
	}
	if got := len(a.LocalState()); got >= size {
		t.Fatalf("state of %d bytes after the drop, %d before", got, size)
	}
	// The peers keep listing what they dropped, for those that have not
	// seen their acknowledgement yet, and a restart keeps that.
	net.restart(t, "a")
	net.settle(t, 2)
	a = net.nodes["a"]
	if acks := net.acksOf("a"); !slices.Contains(acks, k) {
		t.Fatalf("after a restart a acknowledges %v, want %v among them", acks, k)
	}
	// A late state that still holds the tombstone: skipped without a word.
	withTombstone.sender = "b"
	// (Every name counts as a member here, as without Config.IsMember:
	// it is the record of the drop that keeps it out.)
	if err := a.HandleMessage("b", append([]byte{msgState}, encodeStateAs(withTombstone.prefix, withTombstone.sender, withTombstone.st, true)...)); err != nil {
		t.Fatalf("a late state with the tombstone: %v", err)
	}
	if got := net.holders("d"); len(got) != 0 {
		t.Fatalf("a late state with the tombstone brought d back in %v", got)
	}
	a.Allocator.cfg.IsMember = func(n string) bool { return n != "d" }
	// d's own older info (a peer cut off since before the removal, or a
	// replay): refused, counted, d stays out.
	err := a.HandleMessage("b", append([]byte{msgState}, encodeStateAs(old.prefix, old.sender, old.st, true)...))
	if got := net.holders("d"); len(got) != 0 {
		t.Fatalf("d came back in %v (err %v)", got, err)
	}
	if n, note := a.Allocator.refusals(RejectUnknownPeer); n != 1 || !strings.Contains(note, "about d") {
		t.Fatalf("d's older info: %d unknown-peer refusals (%q), err %v", n, note, err)
	}
	mustAlloc(t, a.Allocator, "pod2", "eth0")
}

// TestTombstoneWaitsForEveryPeer: a peer that has not acknowledged the
// tombstone (cut off, or down) holds every drop back, however long,
// until it acknowledges it or is itself removed; then it goes, and no
// peer is left holding the name's older info.
func TestTombstoneWaitsForEveryPeer(t *testing.T) {
	net := newSimNet(32)
	for _, n := range []string{"a", "b", "c", "d", "e", "f"} {
		net.add(t, n, "10.0.0.0/16", 6, 0)
	}
	net.settle(t, 5)
	// e and f are cut off, each alone, when d is removed.
	net.part = map[string]int{"e": 1, "f": 2}
	net.kill("d")
	net.removeGone(t, 0)
	net.rounds(3 * dropGraceTicks)
	p := net.nodes["a"].Allocator.st.peers["d"]
	k := ack{"d", p.Epoch}
	if got := net.holders("d"); len(got) != 5 || !p.Removed {
		t.Fatalf("with e and f cut off, d's info held by %v (a's %+v)", got, p)
	}
	for _, n := range []string{"e", "f"} {
		if p := net.nodes[n].Allocator.st.peers["d"]; p.Removed {
			t.Fatalf("%s learnt the removal while cut off: %+v", n, p)
		}
	}
	// e comes back and acknowledges it; f is still cut off.
	delete(net.part, "e")
	net.rounds(3 * dropGraceTicks)
	if got := net.holders("d"); len(got) != 5 || !slices.Contains(net.acksOf("e"), k) {
		t.Fatalf("with f cut off, d's info held by %v; e acknowledges %v", got, net.acksOf("e"))
	}
	// f goes down for good without having heard of the removal: it holds
	// the drop back until an operator removes it too.
	net.kill("f")
	delete(net.gone, "f")
	clear(net.part)
	net.rounds(3 * dropGraceTicks)
	if got := net.holders("d"); len(got) != 4 {
		t.Fatalf("with f down, d's tombstone held by %v", got)
	}
	if _, err := net.nodes["a"].RemovePeer("f"); err != nil {
		t.Fatal(err)
	}
	for r := 0; r < 4*dropGraceTicks && len(net.holders("d")) > 0; r++ {
		net.round()
		if g := net.ghost(); g != "" {
			t.Fatal(g)
		}
	}
	if got := net.holders("d"); len(got) != 0 {
		t.Fatalf("d's tombstone still held by %v after f's removal", got)
	}
	// f's own tombstone goes the same way.
	net.rounds(2 * dropGraceTicks)
	if got := net.holders("f"); len(got) != 0 {
		t.Fatalf("f's tombstone still held by %v", got)
	}
}

// TestTombstoneAckRemembered: an acknowledgement counts once seen, also
// after the acknowledging peer's newer info lists it no more (it dropped
// the tombstone, and its list of recent drops expired, before this peer
// saw the others'): otherwise such a tombstone would stay here for good.
// A live member this peer has no info of holds the drop back.
func TestTombstoneAckRemembered(t *testing.T) {
	net := newSimNet(33)
	for _, n := range []string{"a", "b", "c", "d"} {
		net.add(t, n, "10.0.0.0/16", 4, 0)
	}
	net.settle(t, 5)
	k := net.removeDead(t, "d")
	a := net.nodes["a"].Allocator
	seen := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.acks.seen[k]["b"] && a.acks.seen[k]["c"]
	}
	for r := 0; r < 50 && !seen(); r++ {
		net.round()
	}
	a.mu.Lock()
	if s := a.acks.seen[k]; !s["b"] || !s["c"] {
		a.mu.Unlock()
		t.Fatalf("acknowledgements of %v seen: %v", k, s)
	}
	b := a.st.peers["b"]
	b.Version++
	b.Acks = nil
	a.st.peers["b"] = b
	a.mu.Unlock()
	// A live member whose info has not reached a yet (it joined where
	// the removal had not reached) holds the drop back.
	a.SetMembers(map[string]bool{"b": true, "c": true, "newcomer": true})
	for range 2 * dropGraceTicks {
		a.Tick()
	}
	if got := net.holders("d"); !slices.Contains(got, "a") {
		t.Fatalf("a dropped d's tombstone while a live member it has no info of could hold d's older info (held by %v)", got)
	}
	a.SetMembers(map[string]bool{"b": true, "c": true})
	for range dropGraceTicks + 2 {
		a.Tick()
	}
	if got := net.holders("d"); slices.Contains(got, "a") {
		t.Fatalf("a still holds d's tombstone (held by %v)", got)
	}
}

// TestAcksSignedAndWellFormed: the list of acknowledgements is covered by
// the info's signature, an info with more than maxAcks is refused as held,
// and the decoder refuses a list that is not sorted by name or names
// nobody.
func TestAcksSignedAndWellFormed(t *testing.T) {
	p := peerInfo{Epoch: 1, Version: 2, ID: "x", ListsAcks: true, Acks: []ack{{"d", 1}, {"e", 2}}}
	q := p
	q.Acks = []ack{{"d", 1}, {"e", 3}}
	pre := mustPrefix("10.0.0.0/16")
	if slices.Equal(infoSigBytes(pre, "a", p), infoSigBytes(pre, "a", q)) {
		t.Fatal("an acknowledgement's epoch is not under the signature")
	}
	r := p
	r.ListsAcks, r.Acks = false, nil
	if slices.Equal(infoSigBytes(pre, "a", p), infoSigBytes(pre, "a", r)) {
		t.Fatal("the list is not under the signature")
	}

	net := newSimNet(34)
	a := settleTrio(t, net)
	w := forged(t, net)
	c := w.st.peers["c"]
	c.Version++
	c.ListsAcks = true
	c.Acks = nil
	for i := range maxAcks + 1 {
		c.Acks = append(c.Acks, ack{fmt.Sprintf("gone%04d", i), 1})
	}
	w.st.peers["c"] = c
	err := send(a, w)
	if n, _ := a.Allocator.refusals(RejectHeld); n != 1 || err != nil {
		t.Fatalf("%d acknowledgements: %d held refusals, err %v", len(c.Acks), n, err)
	}
	if got := a.Allocator.st.peers["c"]; len(got.Acks) > maxAcks {
		t.Fatalf("c's info merged with %d acknowledgements", len(got.Acks))
	}

	for _, tc := range []struct {
		name string
		acks []ack
	}{
		{"unsorted", []ack{{"e", 1}, {"d", 1}}},
		{"a name twice", []ack{{"d", 1}, {"d", 2}}},
		{"no name", []ack{{"", 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := forged(t, net)
			c := w.st.peers["c"]
			c.ListsAcks, c.Acks = true, tc.acks
			w.st.peers["c"] = c
			if _, err := decodeState(encodeState(w.prefix, w.sender, w.st)); err == nil || !strings.Contains(err.Error(), "acknowledgement") {
				t.Fatalf("decoded: %v", err)
			}
			err := a.HandleMessage("evil", append([]byte{msgState}, encodeState(w.prefix, w.sender, w.st)...))
			if !errors.Is(err, ErrCorruptState) {
				t.Fatalf("merged: %v", err)
			}
		})
	}
}

// TestRmpeerEndsGhost: a peer left holding a dropped name's older info
// (here: restored from a copy of its state file taken before the
// removal, as an operator might) refuses the states that moved that
// name's space, as docs/ipam.md ("Dropping tombstones") says; `mesh rmpeer
// NAME` on it writes the removal there again, after which it merges
// everything, and the others do not take the name back.
func TestRmpeerEndsGhost(t *testing.T) {
	net := newSimNet(35)
	for _, n := range []string{"a", "b", "c", "d"} {
		net.add(t, n, "10.0.0.0/16", 4, 0)
	}
	net.settle(t, 5)
	backup := map[string][]byte{}
	for path, b := range net.store.files {
		if strings.HasPrefix(path, "/sim/c.json") {
			backup[path] = slices.Clone(b)
		}
	}
	net.removeDead(t, "d")
	net.rounds(2 * dropGraceTicks)
	if got := net.holders("d"); len(got) != 0 {
		t.Fatalf("d's tombstone still held by %v", got)
	}
	for path := range net.store.files {
		if strings.HasPrefix(path, "/sim/c.json") {
			delete(net.store.files, path)
		}
	}
	maps.Copy(net.store.files, backup)
	net.restart(t, "c")
	net.rounds(5)
	c := net.nodes["c"].Allocator
	if n, note := c.refusals(RejectUnreleased); n == 0 || !strings.Contains(note, "moves space of d") {
		t.Fatalf("the restored peer refused %d states (%q), want the moves of d's space refused", n, note)
	}
	if _, err := c.RemovePeer("d"); err != nil {
		t.Fatal(err)
	}
	before, _ := c.refusals(RejectUnreleased)
	net.settle(t, 5)
	if after, note := c.refusals(RejectUnreleased); after != before {
		t.Fatalf("after rmpeer on the restored peer it refused %d more: %s", after-before, note)
	}
	for _, n := range []string{"a", "b"} {
		a := net.nodes[n].Allocator
		a.mu.Lock()
		p, ok := a.st.peers["d"]
		a.mu.Unlock()
		if ok {
			t.Fatalf("%s took d back: %+v", n, p)
		}
	}
}
