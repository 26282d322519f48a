package ipam

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// testIdentities is the membership's side of signed infos for the tests:
// real ed25519 keys, one per name (derived from the name), every name of
// keys bound; legacy names send unsigned infos; allRead is what AllRead
// says.
type testIdentities struct {
	keys    map[string]ed25519.PrivateKey
	legacy  map[string]bool
	reads   map[string]bool
	allRead bool
}

func newTestIdentities(bound ...string) *testIdentities {
	ids := &testIdentities{keys: map[string]ed25519.PrivateKey{}, legacy: map[string]bool{}, reads: map[string]bool{}, allRead: true}
	for _, n := range bound {
		ids.keys[n] = testKey(n)
	}
	return ids
}

func testKey(name string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("test identity " + name))
	return ed25519.NewKeyFromSeed(seed[:])
}

// node is the Identities of the named node.
func (ids *testIdentities) node(self string) Identities { return nodeIdentities{ids, self} }

type nodeIdentities struct {
	ids  *testIdentities
	self string
}

func (n nodeIdentities) Sign(msg []byte) []byte { return ed25519.Sign(n.ids.keys[n.self], msg) }

func (n nodeIdentities) Verify(name string, msg, sig []byte) error {
	k, ok := n.ids.keys[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownSigner, name)
	}
	if !ed25519.Verify(k.Public().(ed25519.PublicKey), msg, sig) {
		return ErrBadSignature
	}
	return nil
}

func (n nodeIdentities) SendsUnsigned(name string) bool { return n.ids.legacy[name] }
func (n nodeIdentities) AllRead() bool                  { return n.ids.allRead }
func (n nodeIdentities) ReadsSigned(name string) bool   { return n.ids.reads[name] }

// signedNet is three peers a, b, c with identities on a /16, settled, a
// pod on a; "evil" (the forger's own name) is a member of the previous
// release, bound to no identity; "d" a member that signs but has no info
// yet.
func signedNet(t *testing.T, ids *testIdentities) (*simNet, *simNode) {
	t.Helper()
	net := newSimNet(11)
	net.ids = ids
	a := settleTrio(t, net)
	a.Allocator.cfg.IsMember = func(name string) bool {
		return name == "a" || name == "b" || name == "c" || name == "d" || name == "evil"
	}
	ids.legacy["evil"] = true
	return net, a
}

// stateOf decodes a peer's current full state.
func stateOf(t *testing.T, n *simNode) wireState {
	t.Helper()
	w, err := decodeState(n.LocalState())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func sendSigned(a *simNode, w wireState) error {
	return a.HandleMessage("evil", append([]byte{msgState}, encodeStateAs(w.prefix, w.sender, w.st, true)...))
}

// resign signs p as writer with writer's key (bound or not).
func resign(prefix string, name, writer string, p peerInfo) peerInfo {
	p.Writer = writer
	p.Sig = ed25519.Sign(testKey(writer), infoSigBytes(mustPrefix(prefix), name, p))
	return p
}

// TestSignedInfosSettle: with identities every peer signs its info, every
// info in every view verifies, and once every member reads them the
// states on the wire carry the signatures (MIP3).
func TestSignedInfosSettle(t *testing.T) {
	ids := newTestIdentities("a", "b", "c")
	net, _ := signedNet(t, ids)
	for _, name := range []string{"a", "b", "c"} {
		n := net.nodes[name]
		if st := n.LocalState(); string(st[:4]) != stateMagicSigned {
			t.Fatalf("%s sends %q, want %s", name, st[:4], stateMagicSigned)
		}
		if !n.SignsInfos() {
			t.Fatalf("%s does not say it signs", name)
		}
		n.mu.Lock()
		for who, p := range n.st.peers {
			if p.Writer != who {
				t.Errorf("%s's view of %s: written by %q", name, who, p.Writer)
			}
			if err := ids.node(name).Verify(p.Writer, infoSigBytes(n.cfg.Range, who, p), p.Sig); err != nil {
				t.Errorf("%s's view of %s: %v", name, who, err)
			}
		}
		n.mu.Unlock()
		if r := n.Status().Rejected; len(r) != 0 {
			t.Errorf("%s refused honest input: %v", name, r)
		}
	}
}

// TestSignedInfosRules: one named case per rule of signatureRuleLocked,
// each a state sent to a by a holder of the mesh key.
func TestSignedInfosRules(t *testing.T) {
	const prefix = "10.0.0.0/16"
	cases := []struct {
		name   string
		reason string // "" = accepted
		forge  func(t *testing.T, net *simNet, w *wireState)
		check  func(t *testing.T, before, after peerInfo)
	}{
		{"signed info of b relayed by anyone is accepted", "", func(t *testing.T, net *simNet, w *wireState) {
			net.clock.Advance(1e9)
			mustAlloc(t, net.nodes["b"].Allocator, "pod-b", "eth0") // b publishes anew
			w.st.peers["b"] = stateOf(t, net.nodes["b"]).st.peers["b"]
		}, func(t *testing.T, before, after peerInfo) {
			if after.Version <= before.Version || after.Writer != "b" {
				t.Fatalf("b's newer signed info not taken: %+v, was %+v", after, before)
			}
		}},
		{"forged info under b's name signed by the forger", RejectBadSignature, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version++
			b.Held = []uint64{1, 2, 3}
			w.st.peers["b"] = resign(prefix, "b", "evil", b)
		}, nil},
		{"forged info under b's name with b as writer and another key", RejectBadSignature, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version++
			b.Held = []uint64{1, 2, 3}
			b = resign(prefix, "b", "c", b)
			b.Writer = "b"
			w.st.peers["b"] = b
		}, nil},
		{"signed info of b with a tampered field", RejectBadSignature, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Free += 1000
			w.st.peers["b"] = b
		}, nil},
		{"signed info of b tampered to name another peer", RejectBadSignature, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version = w.st.peers["c"].Version + 1
			w.st.peers["c"] = resign(prefix, "b", "b", b)
		}, nil},
		{"unsigned info of a peer that signs", RejectUnsigned, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			b.Version++
			b.Writer, b.Sig = "", nil
			w.st.peers["b"] = b
		}, nil},
		{"unsigned info of a peer seen signing, even if it says it sends unsigned", RejectUnsigned, func(t *testing.T, net *simNet, w *wireState) {
			net.ids.legacy["b"] = true
			b := w.st.peers["b"]
			b.Version++
			b.Writer, b.Sig = "", nil
			w.st.peers["b"] = b
		}, nil},
		{"unsigned info of a member that signs, first heard of", RejectUnsigned, func(t *testing.T, net *simNet, w *wireState) {
			w.st.peers["d"] = peerInfo{Version: uint64(net.clock.Now().UnixMilli())}
		}, nil},
		{"own info of a member bound to no identity here (as of a peer gone before this one joined) is taken within the bounds", "", func(t *testing.T, net *simNet, w *wireState) {
			w.st.peers["evil"] = resign(prefix, "evil", "evil", peerInfo{Version: uint64(net.clock.Now().UnixMilli())})
		}, nil},
		{"removal of b by a writer bound to no identity", RejectUnknownSigner, func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			w.st.peers["b"] = resign(prefix, "b", "evil", peerInfo{Epoch: b.Epoch + 1, Version: b.Version + 1, ID: b.ID, Removed: true})
		}, nil},
		{"removal of b signed by c (rmpeer by any member) is accepted", "", func(t *testing.T, net *simNet, w *wireState) {
			b := w.st.peers["b"]
			w.st.peers["b"] = resign(prefix, "b", "c", peerInfo{Epoch: b.Epoch + 1, Version: b.Version + 1, ID: b.ID, Removed: true})
		}, func(t *testing.T, before, after peerInfo) {
			if !after.Removed || after.Writer != "c" || after.Epoch != before.Epoch+1 {
				t.Fatalf("c's removal of b not taken: %+v", after)
			}
		}},
		{"unsigned info in a state of a member of this release is dropped, not counted", "", func(t *testing.T, net *simNet, w *wireState) {
			net.ids.reads["d"] = true
			w.sender = "d"
			b := w.st.peers["b"]
			b.Version++
			b.Writer, b.Sig = "", nil
			w.st.peers["b"] = b
		}, func(t *testing.T, before, after peerInfo) {
			if comparePeerInfo(after, before) != 0 {
				t.Fatalf("b's info changed: %+v, was %+v", after, before)
			}
		}},
		{"unsigned info of a member of the previous release is accepted", "", func(t *testing.T, net *simNet, w *wireState) {
			w.st.peers["evil"] = peerInfo{Version: uint64(net.clock.Now().UnixMilli())}
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ids := newTestIdentities("a", "b", "c", "d")
			net, a := signedNet(t, ids)
			// a up to date with c, so that only the forgery is new.
			if err := a.MergeRemoteState(net.nodes["c"].LocalState()); err != nil {
				t.Fatal(err)
			}
			a.mu.Lock()
			before := a.st.clone()
			a.mu.Unlock()
			w := stateOf(t, net.nodes["c"])
			w.sender = "evil"
			tc.forge(t, net, &w)
			_ = sendSigned(a, w)
			st := a.Status()
			a.mu.Lock()
			after := a.st.clone()
			a.mu.Unlock()
			if tc.reason == "" {
				if len(st.Rejected) != 0 {
					t.Fatalf("refused: %v %q", st.Rejected, st.Problems)
				}
				if tc.check != nil {
					tc.check(t, before.peers["b"], after.peers["b"])
				}
				return
			}
			if st.Rejected[tc.reason] != 1 || len(st.Rejected) != 1 {
				t.Fatalf("rejections %v, want one %q", st.Rejected, tc.reason)
			}
			named := 0
			for _, p := range st.Problems {
				if strings.Contains(p, "("+tc.reason+")") {
					named++
				}
			}
			if named != 1 {
				t.Fatalf("reason %q named %d times in %q", tc.reason, named, st.Problems)
			}
			for _, n := range []string{"b", "c", "d"} {
				if comparePeerInfo(after.peers[n], before.peers[n]) != 0 {
					t.Errorf("%s's info changed: %+v, was %+v", n, after.peers[n], before.peers[n])
				}
			}
		})
	}
}

// TestSignedInfoReplayLoses: an older signed info of b, replayed, changes
// nothing and is no refusal: the newer one wins by its version.
func TestSignedInfoReplayLoses(t *testing.T) {
	ids := newTestIdentities("a", "b", "c")
	net, a := signedNet(t, ids)
	old := stateOf(t, net.nodes["b"])
	net.clock.Advance(1e9)
	mustAlloc(t, net.nodes["b"].Allocator, "pod-b", "eth0") // b publishes anew
	for range 3 {
		net.round()
	}
	net.settle(t, 2)
	a.mu.Lock()
	newer := a.st.peers["b"]
	a.mu.Unlock()
	if newer.Version <= old.st.peers["b"].Version {
		t.Fatalf("b's version did not grow: %d", newer.Version)
	}
	old.sender = "evil"
	if err := sendSigned(a, old); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	got := a.st.peers["b"]
	a.mu.Unlock()
	if comparePeerInfo(got, newer) != 0 {
		t.Fatalf("replay replaced b's info: %+v, want %+v", got, newer)
	}
	if r := a.Status().Rejected; len(r) != 0 {
		t.Fatalf("a replay is no refusal: %v", r)
	}
}

// TestSignedRmpeerByAnotherWriter: a removal written by rmpeer on c
// reaches a signed by c; a takes it, and b (alive) re-asserts itself
// signed at the removal's epoch, which a takes too.
func TestSignedRmpeerByAnotherWriter(t *testing.T) {
	ids := newTestIdentities("a", "b", "c")
	net, a := signedNet(t, ids)
	if _, err := net.nodes["c"].RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	if err := a.MergeRemoteState(net.nodes["c"].LocalState()); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	rm := a.st.peers["b"]
	a.mu.Unlock()
	if !rm.Removed || rm.Writer != "c" {
		t.Fatalf("a's view of b after c's rmpeer: %+v", rm)
	}
	net.settle(t, 3)
	a.mu.Lock()
	back := a.st.peers["b"]
	a.mu.Unlock()
	if back.Removed || back.Writer != "b" || back.Epoch != rm.Epoch {
		t.Fatalf("b did not re-assert itself signed at the removal's epoch: %+v", back)
	}
	if r := a.Status().Rejected; len(r) != 0 {
		t.Fatalf("refused honest input: %v", r)
	}
}

// TestSignedInfosUpgradeWindow: until every member reads signed states a
// peer sends states every release reads (MIP2, no signatures) and accepts
// unsigned infos as the previous release did; then it switches for good,
// says so, and refuses unsigned infos of peers that sign.
func TestSignedInfosUpgradeWindow(t *testing.T) {
	ids := newTestIdentities("a", "b", "c")
	ids.allRead = false
	net := newSimNet(12)
	net.ids = ids
	for _, n := range []string{"a", "b", "c"} {
		net.add(t, n, "10.0.0.0/16", 3, 0)
	}
	net.settle(t, 5)
	a := net.nodes["a"]
	for _, n := range net.nodes {
		if st := n.LocalState(); string(st[:4]) != stateMagic || n.SignsInfos() {
			t.Fatalf("%s sends %q during the upgrade", n.cfg.Self, st[:4])
		}
	}
	// An unsigned info of b (as a node of the previous release relays it)
	// is taken.
	w := stateOf(t, net.nodes["c"])
	b := w.st.peers["b"]
	b.Version++
	b.Writer, b.Sig = "", nil
	w.st.peers["b"] = b
	if err := a.MergeRemoteState(encodeState(w.prefix, "c", w.st)); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	got := a.st.peers["b"].Version
	a.mu.Unlock()
	if got != b.Version || len(a.Status().Rejected) != 0 {
		t.Fatalf("unsigned info during the upgrade not taken: version %d, want %d; %v", got, b.Version, a.Status().Rejected)
	}
	// Every member reads them now: one tick switches, for good.
	ids.allRead = true
	net.settle(t, 3)
	ids.allRead = false
	if st := a.LocalState(); string(st[:4]) != stateMagicSigned || !a.SignsInfos() {
		t.Fatalf("a sends %q after every member reads signed states", st[:4])
	}
	w = stateOf(t, net.nodes["c"])
	b = w.st.peers["b"]
	a.mu.Lock()
	b.Version = a.st.peers["b"].Version + 1 // newer than what a holds
	a.mu.Unlock()
	b.Writer, b.Sig = "", nil
	w.st.peers["b"] = b
	_ = a.MergeRemoteState(encodeState(w.prefix, "c", w.st))
	if a.Status().Rejected[RejectUnsigned] != 1 {
		t.Fatalf("unsigned info of a signing peer after the switch: %v", a.Status().Rejected)
	}
}

// TestSignedStateFileRoundTrip: the state file keeps the signatures of
// every info and the switch to signed states (format 2, or 3 with a
// journal), so a restarted
// peer forwards the others' signed infos and still refuses their unsigned
// ones; a state file of the previous release (format 1) loads unchanged.
func TestSignedStateFileRoundTrip(t *testing.T) {
	ids := newTestIdentities("a", "b", "c")
	net, a := signedNet(t, ids)
	var f fileState
	if err := json.Unmarshal(net.store.files["/sim/a.json"], &f); err != nil {
		t.Fatal(err)
	}
	// Format 3 while the allocator runs (2 with a journal beside it);
	// TestJournalCloseWritesPlainFile checks the 2 that Close leaves.
	if f.Format != fileFormatJournal || !f.SignedInfos || string(f.State[:4]) != stateMagicSigned {
		t.Fatalf("state file format %d, signedInfos %v, state %q", f.Format, f.SignedInfos, f.State[:4])
	}
	a.mu.Lock()
	before := a.st.clone()
	a.mu.Unlock()
	net.restart(t, "a")
	a = net.nodes["a"]
	a.mu.Lock()
	for _, n := range []string{"b", "c"} {
		// Heartbeats are not persisted one by one (I4): the file's info
		// may be older, but it is signed.
		got := a.st.peers[n]
		if err := ids.node("a").Verify(got.Writer, infoSigBytes(a.cfg.Range, n, got), got.Sig); err != nil || got.Writer != n {
			t.Errorf("%s's signature lost in the restart: %+v: %v", n, got, err)
		}
	}
	signed := a.signedWire
	a.mu.Unlock()
	if !signed {
		t.Fatal("the switch to signed states was not kept")
	}
	net.settle(t, 3)
	out := stateOf(t, a)
	for _, n := range []string{"b", "c"} {
		if p := out.st.peers[n]; len(p.Sig) != sigSize {
			t.Errorf("a forwards %s's info without its signature", n)
		}
	}

	// The previous release's file: format 1, state without signatures.
	cfg := testConfig(t, "a", "10.0.0.0/16")
	st := before.clone()
	for n, p := range st.peers {
		p.Writer, p.Sig = "", nil
		st.peers[n] = p
	}
	old, err := encodeFile(cfg, "id-a", st, nil, paxosDurable{}, gateway{}, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	var of fileState
	if err := json.Unmarshal(old, &of); err != nil || of.Format != fileFormat || string(of.State[:4]) != stateMagic {
		t.Fatalf("previous release's file: format %d, %v", of.Format, err)
	}
	store := &memStore{files: map[string][]byte{cfg.StateFile: old}}
	cfg.Identities = ids.node("a")
	ids.allRead = false
	up, err := newAllocator(cfg, nopTransport{}, store)
	if err != nil {
		t.Fatalf("previous release's state file: %v", err)
	}
	defer up.Close()
	up.mu.Lock()
	peers := slices.Sorted(maps.Keys(up.st.peers))
	me := up.st.peers["a"]
	up.mu.Unlock()
	if !slices.Equal(peers, []string{"a", "b", "c"}) || me.Writer != "a" || len(me.Sig) != sigSize {
		t.Fatalf("loaded peers %v, own info %+v", peers, me)
	}
	var nf fileState
	if err := json.Unmarshal(store.files[cfg.StateFile], &nf); err != nil || nf.Format != fileFormatJournal || string(nf.State[:4]) != stateMagicSigned || nf.SignedInfos {
		t.Fatalf("rewritten file: format %d, signedInfos %v, %v", nf.Format, nf.SignedInfos, err)
	}
}

// lockWatch is an Identities that records whether the allocator's lock
// was held while a signature was verified.
type lockWatch struct {
	Identities
	a               *Allocator
	inside, outside int
}

func (l *lockWatch) Verify(name string, msg, sig []byte) error {
	if l.a.mu.TryLock() {
		l.a.mu.Unlock()
		l.outside++
	} else {
		l.inside++
	}
	return l.Identities.Verify(name, msg, sig)
}

// TestSignaturesVerifiedOutsideTheLock: merging a state whose infos moved
// verifies each newer info's signature before the merge takes the
// allocator's lock, so that a state of a large mesh does not hold up
// Allocate for a verification per peer.
func TestSignaturesVerifiedOutsideTheLock(t *testing.T) {
	ids := newTestIdentities("a", "b", "c")
	net, a := signedNet(t, ids)
	net.clock.Advance(1e9)
	mustAlloc(t, net.nodes["b"].Allocator, "pod-b", "eth0")
	mustAlloc(t, net.nodes["c"].Allocator, "pod-c", "eth0")
	watch := &lockWatch{Identities: a.Allocator.cfg.Identities, a: a.Allocator}
	a.Allocator.cfg.Identities = watch
	for _, n := range []string{"b", "c"} {
		if err := a.MergeRemoteState(net.nodes[n].LocalState()); err != nil {
			t.Fatal(err)
		}
	}
	if watch.outside == 0 || watch.inside != 0 {
		t.Fatalf("verified %d signatures outside the lock and %d inside", watch.outside, watch.inside)
	}
	if r := a.Status().Rejected; len(r) != 0 {
		t.Fatalf("refused honest input: %v", r)
	}
}

// TestHeartbeatOnlyWithReclaim: with automatic reclaim off, a mesh at rest
// publishes nothing new (heartbeatLocked): every peer's info stays as it
// was, every peer holds the same state, and merging another peer's state
// verifies no signature and writes no state file. A real change (a pod)
// is published at once, an rmpeer of a live peer is beaten by its next
// tick, and with reclaim on the versions grow at every tick as the
// heartbeat reclaim watches.
func TestHeartbeatOnlyWithReclaim(t *testing.T) {
	versions := func(net *simNet) map[string]uint64 {
		m := map[string]uint64{}
		for _, n := range net.nodes {
			n.mu.Lock()
			m[n.cfg.Self] = n.st.peers[n.cfg.Self].Version
			n.mu.Unlock()
		}
		return m
	}
	ids := newTestIdentities("a", "b", "c")
	net, a := signedNet(t, ids)
	net.settle(t, 3)
	before := versions(net)
	for range 30 {
		net.round()
	}
	if after := versions(net); !maps.Equal(before, after) {
		t.Fatalf("versions moved at rest with reclaim off: %v -> %v", before, after)
	}
	same := func(x, y *simNode) bool {
		wx, wy := stateOf(t, x), stateOf(t, y)
		return bytes.Equal(encodeState(wx.prefix, "", wx.st), encodeState(wy.prefix, "", wy.st))
	}
	if !same(a, net.nodes["b"]) || !same(a, net.nodes["c"]) {
		t.Fatal("peers at rest hold different states")
	}
	watch := &lockWatch{Identities: a.Allocator.cfg.Identities, a: a.Allocator}
	a.Allocator.cfg.Identities = watch
	file := slices.Clone(net.store.files[a.cfg.StateFile])
	if err := a.MergeRemoteState(net.nodes["b"].LocalState()); err != nil {
		t.Fatal(err)
	}
	if watch.inside+watch.outside != 0 || !bytes.Equal(file, net.store.files[a.cfg.StateFile]) {
		t.Fatalf("a merge at rest verified %d signatures, state file rewritten: %v", watch.inside+watch.outside, !bytes.Equal(file, net.store.files[a.cfg.StateFile]))
	}

	// A pod is published at once, and reaches everyone.
	mustAlloc(t, net.nodes["b"].Allocator, "pod-b", "eth0")
	net.settle(t, 3)
	if v := versions(net)["b"]; v <= before["b"] {
		t.Fatalf("b's new pod not published: version %d", v)
	}
	if !same(a, net.nodes["b"]) {
		t.Fatal("b's new pod did not reach a")
	}

	// An rmpeer of a live b: b re-asserts itself at its next tick.
	if _, err := a.RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	net.settle(t, 3)
	a.mu.Lock()
	bInfo := a.st.peers["b"]
	a.mu.Unlock()
	if bInfo.Removed || bInfo.Writer != "b" {
		t.Fatalf("b did not re-assert itself after rmpeer: %+v", bInfo)
	}

	// With reclaim on, every tick is a heartbeat.
	rnet := settledSim(t, 5, "10.0.0.0/16", time.Minute, "a", "b", "c")
	rbefore := versions(rnet)
	rnet.round()
	for n, v := range versions(rnet) {
		if v <= rbefore[n] {
			t.Fatalf("with reclaim on, %s's version did not grow at a tick: %d -> %d", n, rbefore[n], v)
		}
	}
}
