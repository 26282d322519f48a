package ipam

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// sizedState is an n-peer state on the default /12 (seeded split, names of
// nodeNameLen bytes) in which every peer holds k addresses of its own
// space, gap apart.
func sizedState(n, k int, gap uint64) state {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d.cluster.local", i)
	}
	size := rangeSize(mustPrefix("10.32.0.0/12"))
	st := newState(size)
	st.seed = seed{Members: uint64(n), ID: 0x1234}
	st.ring = seededRing(size, names)
	for i, name := range names {
		base := size * uint64(i) / uint64(n)
		held := make([]uint64, k)
		for j := range held {
			held[j] = base + 1 + uint64(j)*gap
		}
		st.peers[name] = peerInfo{Version: 1_780_000_000_000 + uint64(i), ID: fmt.Sprintf("%016x", i), Free: 4000, Held: held}
	}
	return st
}

// nodeNameLen is the length of sizedState's peer names.
const nodeNameLen = len("node-0000.cluster.local")

// Bounds on the encoded whole state, which every ring change sends to
// every member (docs/scale.md): a peer entry (its name, info and its
// seeded ring segment) costs its name plus at most peerEntryOverhead
// bytes, and each held address at most heldDenseBytes when a peer's pods
// sit next to each other (the allocator hands out addresses in order) and
// heldSparseBytes when they are 128 to 16383 addresses apart (offsets are
// delta-encoded uvarints). A codec change that
// breaks one of these makes every ring change cost more on every node.
const (
	peerEntryOverhead = 48
	heldDenseBytes    = 1.05
	heldSparseBytes   = 2.05
)

func TestStateSizeBound(t *testing.T) {
	prefix := mustPrefix("10.32.0.0/12")
	enc := func(n, k int, gap uint64) float64 {
		return float64(len(encodeState(prefix, "node-0000.cluster.local", sizedState(n, k, gap))))
	}
	for _, n := range []int{10, 100, 1000} {
		t.Run(fmt.Sprint(n, "peers"), func(t *testing.T) {
			bare := enc(n, 0, 1)
			if per := bare / float64(n); per > float64(nodeNameLen+peerEntryOverhead) {
				t.Errorf("%.1f bytes per peer entry without Held, want at most %d (name) + %d", per, nodeNameLen, peerEntryOverhead)
			}
			const k = 100
			if per := (enc(n, k, 1) - bare) / float64(n*k); per > heldDenseBytes {
				t.Errorf("%.2f bytes per held address (dense), want at most %.1f", per, heldDenseBytes)
			}
			const gap = 128
			if per := (enc(n, k, gap) - bare) / float64(n*k); per > heldSparseBytes {
				t.Errorf("%.2f bytes per held address (gap %d), want at most %.1f", per, gap, heldSparseBytes)
			}
			// Linear in the peers: doubling them at most doubles the state
			// (plus the varints that grow a byte).
			if r := enc(2*n, 10, 1) / enc(n, 10, 1); r > 2.1 {
				t.Errorf("state of %d peers is %.2f times that of %d, want at most 2.1", 2*n, r, n)
			}
			t.Logf("%d peers: %.1f B per peer entry, %.2f B per dense held address, %.2f B per sparse one", n, bare/float64(n), (enc(n, k, 1)-bare)/float64(n*k), (enc(n, k, gap)-bare)/float64(n*k))
		})
	}
}

// tombstoneBytes bounds what a removed peer costs in every whole state
// once its reservations are gone (docs/ipam.md, "Bounds on what a peer may
// claim"): its name plus the info an rmpeer signs. Tombstones are never
// dropped, so this times the removals a mesh has seen is what its state
// carries for them.
const tombstoneBytes = nodeNameLen + 100

// tombstone is a removal of a peer named like sizedState's, signed by a
// writer of such a name.
func tombstone(i int) (string, peerInfo) {
	return fmt.Sprintf("gone-%04d.cluster.local", i), peerInfo{Epoch: 1, Version: 1_780_000_000_000 + uint64(i), ID: fmt.Sprintf("%016x", i),
		Removed: true, Writer: "node-0001.cluster.local", Sig: make([]byte, 64)}
}

func TestStateSizeOfTombstones(t *testing.T) {
	prefix := mustPrefix("10.32.0.0/12")
	st := sizedState(20, 0, 1)
	before := len(encodeStateAs(prefix, "node-0000.cluster.local", st, true))
	const n = 1000
	for i := range n {
		name, p := tombstone(i)
		st.peers[name] = p
	}
	per := float64(len(encodeStateAs(prefix, "node-0000.cluster.local", st, true))-before) / n
	if per > float64(tombstoneBytes) {
		t.Errorf("%.1f bytes per tombstone, want at most %d", per, tombstoneBytes)
	}
	if per < float64(tombstoneBytes)/2 {
		t.Errorf("%.1f bytes per tombstone: the bound %d (and docs/ipam.md) overstate it", per, tombstoneBytes)
	}
}

// TestStateSizeProblem: a state that nears MaxStateBytes, here through
// tombstones, is a problem in status that names the tombstones; past the
// bound the problem says that peers refuse it; back under the warning
// threshold the problem goes.
func TestStateSizeProblem(t *testing.T) {
	_, a := hostileNet(t)
	// The problem's text changes with nearly every encoding once the state
	// is large; it is logged only when its level changes.
	var logged bytes.Buffer
	a.mu.Lock()
	a.log = slog.New(slog.NewTextHandler(&logged, nil))
	a.mu.Unlock()
	warnings := func() int { return strings.Count(logged.String(), "IPAM state is") }
	problem := func() string {
		_ = a.LocalState()
		for _, p := range a.Status().Problems {
			if strings.Contains(p, "IPAM state is") {
				return p
			}
		}
		return ""
	}
	if p := problem(); p != "" {
		t.Fatalf("problem %q for a small state", p)
	}
	if st := a.Status(); st.Tombstones != 0 || st.StateBytes == 0 || st.StateBytes >= stateSizeWarn {
		t.Fatalf("small state: status %d tombstones, %d bytes", st.Tombstones, st.StateBytes)
	}
	added := 0
	// grow adds tombstones until this peer's state is at least size bytes.
	grow := func(size int) {
		for len(a.LocalState()) < size {
			a.mu.Lock()
			for range 200 {
				name, p := tombstone(added)
				a.st.peers[name] = p
				added++
			}
			a.mu.Unlock()
		}
	}
	grow(stateSizeWarn)
	if p := problem(); !strings.Contains(p, fmt.Sprintf("%d of them removed", added)) || !strings.Contains(p, "past it, every peer refuses") {
		t.Fatalf("near the bound, %d tombstones: problem %q", added, p)
	}
	if st := a.Status(); st.Tombstones != added || st.StateBytes < stateSizeWarn || st.StateBytes != len(a.LocalState()) {
		t.Fatalf("status: %d tombstones, state %d bytes; want %d, and the size of the state sent (%d)", st.Tombstones, st.StateBytes, added, len(a.LocalState()))
	}
	if w := warnings(); w != 1 {
		t.Fatalf("near the bound: %d warnings logged, want 1:\n%s", w, logged.String())
	}
	grow(stateSizeWarn + 64<<10) // the text changes, the level does not
	if p := problem(); !strings.Contains(p, fmt.Sprintf("%d of them removed", added)) {
		t.Fatalf("grown near the bound, %d tombstones: problem %q", added, p)
	}
	if w := warnings(); w != 1 {
		t.Fatalf("grown near the bound: %d warnings logged, want still 1:\n%s", w, logged.String())
	}
	grow(MaxStateBytes + 1)
	if p := problem(); !strings.Contains(p, "every peer refuses it (oversized)") {
		t.Fatalf("past the bound: problem %q", p)
	}
	if w := warnings(); w != 2 {
		t.Fatalf("past the bound: %d warnings logged, want 2:\n%s", w, logged.String())
	}
	// The state shrinks (here by hand); a broadcast's encoding, not only
	// a push/pull's, brings the problem and the size up to date.
	a.mu.Lock()
	for name, p := range a.st.peers {
		if p.Removed {
			delete(a.st.peers, name)
		}
	}
	sent := len(a.stateMsgLocked()) - 1
	a.mu.Unlock()
	st := a.Status()
	if st.StateBytes != sent || st.Tombstones != 0 {
		t.Fatalf("after a broadcast: status %d bytes, %d tombstones; sent %d", st.StateBytes, st.Tombstones, sent)
	}
	for _, p := range st.Problems {
		if strings.Contains(p, "IPAM state is") {
			t.Fatalf("problem %q after the state shrank", p)
		}
	}
	if !strings.Contains(logged.String(), "back under the size that warns") {
		t.Fatalf("the state shrank, nothing logged:\n%s", logged.String())
	}
}

// TestStateSizeAtKubernetesScale: a signed state of 5000 peers (the
// Kubernetes design limit, under maxPeers) with 10 pods each fits under
// MaxStateBytes, so such a mesh forms; with 110 pods each (the kubelet's
// default maximum) the byte bound, not maxPeers, is what a mesh meets
// first, at the size this test reports (docs/scale.md, "The IPAM's first
// wall").
func TestStateSizeAtKubernetesScale(t *testing.T) {
	prefix := mustPrefix("10.32.0.0/12")
	signed := func(n, k int) int {
		st := sizedState(n, k, 1)
		for name, p := range st.peers {
			p.Writer, p.Sig = name, make([]byte, 64)
			st.peers[name] = p
		}
		return len(encodeStateAs(prefix, "node-0000.cluster.local", st, true))
	}
	if maxPeers < 5000 {
		t.Fatalf("maxPeers %d is below Kubernetes' 5000 nodes", maxPeers)
	}
	size := signed(5000, 10)
	if size > MaxStateBytes {
		t.Fatalf("a signed state of 5000 peers with 10 pods each is %d bytes, above MaxStateBytes (%d)", size, MaxStateBytes)
	}
	perPeer110 := float64(signed(1000, 110)) / 1000
	fit := int(float64(MaxStateBytes) / perPeer110)
	if fit < 4000 || fit > 5000 {
		t.Errorf("with 110 pods a node %d signed peers fit under MaxStateBytes; docs/scale.md says about 4 400", fit)
	}
	t.Logf("5000 signed peers with 10 pods: %d KiB (%.0f B a peer); with 110 pods: %.0f B a peer, so %d peers fit under %d KiB",
		size>>10, float64(size)/5000, perPeer110, fit, MaxStateBytes>>10)
}
