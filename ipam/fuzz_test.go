package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func fuzzSeeds(f *testing.F) {
	net := newSimNet(5)
	for _, n := range []string{"a", "b", "c"} {
		net.add(f, n, "10.0.0.0/24", 3, 0)
	}
	net.settle(f, 10)
	mustAlloc(f, net.nodes["a"].Allocator, "c1", "eth0")
	st := net.nodes["a"].LocalState()
	f.Add(st)
	f.Add(st[:len(st)/2])
	f.Add([]byte{})
	f.Add([]byte(stateMagic))
	f.Add(encodeState(mustPrefix("10.0.0.0/24"), "z", newState(256)))
	dg := net.nodes["a"].PushPullState(false)
	f.Add(dg)
	f.Add(dg[:len(dg)-3])
	f.Add([]byte(stateMagicDigest))
	fuzzSeeds6(f)
}

// FuzzMergeRemoteState: arbitrary bytes never panic and never corrupt the
// receiver; whatever is accepted leaves a state that encodes and decodes.
func FuzzMergeRemoteState(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, buf []byte) {
		a := mustNew(t, Config{Range: mustPrefix("10.0.0.0/24"), Self: "a"}, nil)
		mustAlloc(t, a, "c1", "eth0")
		err := a.MergeRemoteState(buf)
		if err != nil && !errors.Is(err, ErrCorruptState) && !errors.Is(err, ErrRangeMismatch) && !errors.Is(err, ErrRejected) {
			t.Fatalf("unexpected error class: %v", err)
		}
		_ = a.HandleMessage("x", append([]byte{msgState}, buf...))
		_ = a.HandleMessage("x", buf)
		if _, err := decodeState(a.LocalState()); err != nil {
			t.Fatalf("state no longer encodes: %v", err)
		}
		_ = a.Status()
		a.Tick()
		checkBounds(t, a)
	})
}

// checkBounds fails if anything a remote state can put into a's state lies
// beyond the bounds of validate.go.
func checkBounds(t *testing.T, a *Allocator) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.st.peers) > maxPeers {
		t.Fatalf("peer table of %d", len(a.st.peers))
	}
	for name, p := range a.st.peers {
		if p.Epoch >= maxCounter || p.Version >= maxCounter || len(p.Held) > maxHeld {
			t.Fatalf("%s accepted beyond the bounds: epoch %d version %d held %d", name, p.Epoch, p.Version, len(p.Held))
		}
	}
	for _, s := range a.st.ring.segs {
		if s.e.Version >= maxCounter {
			t.Fatalf("ring entry accepted at version %d", s.e.Version)
		}
	}
}

// FuzzHostileState: a valid state whose counters, Held list and names the
// fuzzer chooses is merged (by a receiver that has a real peer table) and
// never leaves anything beyond the bounds. With signed infos (signer: ""
// unsigned, else the forged info's writer, "a" and "b" being the bound
// identities), no info whose signature does not verify is ever taken.
func FuzzHostileState(f *testing.F) {
	f.Add(uint64(1), uint64(1), uint64(1), uint16(3), uint16(10), "evil", false, "")
	f.Add(^uint64(0), ^uint64(0), ^uint64(0), uint16(255), uint16(4000), "b", false, "")
	f.Add(uint64(maxEpochStep), uint64(maxRingStep), uint64(1<<61), uint16(0), uint16(2000), "a", false, "")
	f.Add(uint64(0), uint64(1<<40), uint64(3), uint16(3), uint16(10), "b", true, "")
	f.Add(uint64(1), uint64(1<<40), uint64(3), uint16(3), uint16(10), "b", true, "a")
	f.Add(uint64(0), uint64(1<<40), uint64(3), uint16(3), uint16(10), "b", true, "evil")
	f.Fuzz(func(t *testing.T, epoch, version, ringVersion uint64, heldStart, nHeld uint16, name string, signed bool, signer string) {
		if name == "" || len(name) > maxName || len(signer) > maxName {
			return
		}
		net := newSimNet(3)
		ids := newTestIdentities("a", "b")
		if signed {
			net.ids = ids
		}
		for _, n := range []string{"a", "b"} {
			net.add(t, n, "10.0.0.0/20", 2, 0)
		}
		net.settle(t, 3)
		a := net.nodes["a"].Allocator
		w, err := decodeState(net.nodes["b"].LocalState())
		if err != nil {
			t.Fatal(err)
		}
		var held []uint64
		for off := uint64(heldStart); off < uint64(heldStart)+uint64(nHeld) && off < w.st.ring.size; off++ {
			held = append(held, off)
		}
		w.st.peers[name] = peerInfo{Epoch: epoch, Version: version, Held: held, Removed: signer != name && signer != ""}
		if signer != "" {
			w.st.peers[name] = resign("10.0.0.0/20", name, signer, w.st.peers[name])
		}
		sp := w.st.ring.owned("b")[0]
		w.st.ring = w.st.ring.update(sp.start, sp.end, func(entry) entry { return entry{Version: ringVersion, Owner: name} })
		before := a.st.ring.clone()
		err = a.MergeRemoteState(encodeStateAs(w.prefix, "x", w.st, signed))
		if err != nil && !errors.Is(err, ErrRejected) {
			t.Fatalf("unexpected error class: %v", err)
		}
		a.Tick()
		checkBounds(t, a)
		checkReleases(t, a, before)
		if _, err := decodeState(a.LocalState()); err != nil {
			t.Fatalf("state no longer encodes: %v", err)
		}
		if signed {
			a.mu.Lock()
			defer a.mu.Unlock()
			for n, p := range a.st.peers {
				err := ids.node("a").Verify(p.Writer, infoSigBytes(a.cfg.Range, n, p), p.Sig)
				if errors.Is(err, ErrUnknownSigner) && p.Writer == n {
					// A peer's own info under a name bound to no
					// identity here is taken within the bounds (I5).
					err = nil
				}
				if err != nil || (p.Writer != n && !p.Removed) {
					t.Fatalf("took %s's info %+v: %v", n, p, err)
				}
			}
		}
	})
}

// FuzzLoadStateFile: a corrupt state file yields an error, never a panic.
func FuzzLoadStateFile(f *testing.F) {
	cfg := Config{Range: mustPrefix("10.0.0.0/24"), Self: "a"}
	if err := cfg.validate(); err != nil {
		f.Fatal(err)
	}
	st := newState(256)
	st.seed = seed{1, 1}
	st.ring = seededRing(256, []string{"a", "b"})
	good, _ := encodeFile(cfg, "id", st, []Allocation{{ContainerID: "c1", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.5")}}, paxosDurable{}, gateway{}, 0, false)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"format":1,"range":"10.0.0.0/24","self":"a","state":null}`))
	f.Add([]byte(`{"format":1,"range":"10.0.0.0/24","self":"a","allocations":[{"containerID":"x","addr":"1.2.3.4"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := parseFile(data, cfg)
		if err != nil {
			return
		}
		if _, err := decodeState(encodeState(cfg.Range, "a", l.st)); err != nil {
			t.Fatalf("accepted a file whose state does not re-encode: %v", err)
		}
		// An allocator loads what parseFile accepts with its allocation
		// indexes in step, every allocation listed once.
		lcfg := cfg
		lcfg.StateFile = "state.json"
		a, err := newAllocator(lcfg, nopTransport{}, &memStore{files: map[string][]byte{lcfg.StateFile: data}})
		if err != nil {
			return
		}
		if m := a.indexMismatch(); m != "" {
			t.Fatalf("loaded: %s", m)
		}
		if got := len(a.List()); got != len(l.allocs) {
			t.Fatalf("loaded %d allocations, the file has %d", got, len(l.allocs))
		}
	})
}

// checkReleases fails t if a's ring moved space that a peer owned in
// before while that peer's info, as a now holds it, still lists it and
// the peer is not removed and, if it runs a lease pool and its space is
// protected by vouches, a majority of the voters does not vouch for the
// move (the release rule).
func checkReleases(t *testing.T, a *Allocator, before ring) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, p := range a.st.peers {
		if !p.ListsOwned || p.Removed || p.Leased && !p.ListsVouches {
			continue
		}
		for _, sp := range before.owned(name) {
			for _, l := range p.Owned {
				for off := max(sp.start, l.start); off < min(sp.end, l.end); off = a.st.ring.end(a.st.ring.find(off)) {
					e := a.st.ring.get(off)
					if p.Leased && !e.plainOf(name) {
						if n, voters := a.vouchesLocked(nil, name, span{off, off + 1}); n >= voters/2+1 {
							continue
						}
					}
					if !e.plainOf(name) {
						t.Fatalf("%s's listed space at %d moved to %+v without its release (info %+v)", name, off, e, p)
					}
				}
			}
		}
	}
}
