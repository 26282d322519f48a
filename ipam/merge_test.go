package ipam

import (
	"bytes"
	randv1 "math/rand"
	"math/rand/v2"
	"reflect"
	"testing"
	"testing/quick"
)

// randState builds a small random state over a 64-address range: few
// owners and versions so that collisions, ties and seed clashes are common.
func randState(r *rand.Rand) state {
	const size = 64
	st := newState(size)
	if r.IntN(5) > 0 {
		st.seed = seed{Members: uint64(1 + r.IntN(2)), ID: uint64(1 + r.IntN(2))}
		names := []string{"", "a", "b", "c"}
		for range r.IntN(6) {
			s := uint64(r.IntN(size))
			e := s + 1 + uint64(r.IntN(int(size-s)))
			ent := entry{Version: uint64(r.IntN(4)), Owner: names[r.IntN(4)]}
			if r.IntN(3) == 0 {
				ent.Dead = names[1+r.IntN(3)]
			}
			st.ring = st.ring.update(s, e, func(entry) entry { return ent })
		}
	}
	for _, n := range []string{"a", "b", "c"} {
		if r.IntN(2) == 0 {
			p := peerInfo{Epoch: uint64(r.IntN(2)), Version: uint64(r.IntN(3)), ID: "id" + n, Free: uint64(r.IntN(2))}
			p.Removed = r.IntN(4) == 0
			if r.IntN(2) == 0 {
				p.Held = []uint64{uint64(r.IntN(8)), 8 + uint64(r.IntN(8))}
			}
			if r.IntN(2) == 0 {
				// Signed, by the peer or (for a removal) another writer:
				// the signature orders infos last, and must keep the
				// join a lattice.
				p.Writer = []string{"a", "b", "c"}[r.IntN(3)]
				p.Sig = bytes.Repeat([]byte{byte(r.IntN(2))}, sigSize)
			}
			st.peers[n] = p
		}
	}
	return st
}

type stateTriple struct{ A, B, C state }

// Generate implements quick.Generator (which hands out a math/rand v1).
func (stateTriple) Generate(r1 *randv1.Rand, _ int) reflect.Value {
	r := rand.New(rand.NewPCG(r1.Uint64(), r1.Uint64()))
	return reflect.ValueOf(stateTriple{randState(r), randState(r), randState(r)})
}

func TestMergeProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for i := range 5000 {
		x := stateTriple{randState(r), randState(r), randState(r)}
		a, b, c := x.A, x.B, x.C
		if !stateEqual(join(a, b), join(b, a)) {
			t.Fatalf("case %d: not commutative", i)
		}
		if !stateEqual(join(join(a, b), c), join(a, join(b, c))) {
			t.Fatalf("case %d: not associative", i)
		}
		if !stateEqual(join(a, a), a) {
			t.Fatalf("case %d: not idempotent", i)
		}
		// The join is an upper bound: merging either side again changes
		// nothing.
		j := join(a, b)
		if !stateEqual(join(j, a), j) || !stateEqual(join(j, b), j) {
			t.Fatalf("case %d: join is not an upper bound", i)
		}
	}
}

// quick.Check version of the same, exercising the Generate hook.
func TestMergeQuick(t *testing.T) {
	f := func(x stateTriple) bool {
		return stateEqual(join(x.A, x.B), join(x.B, x.A)) &&
			stateEqual(join(join(x.A, x.B), x.C), join(x.A, join(x.B, x.C)))
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 2000, Rand: nil}); err != nil {
		t.Fatal(err)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	pfx := mustPrefix("10.0.0.0/26")
	for i := range 2000 {
		st := randState(r)
		if st.seed.isZero() {
			st.ring = newRing(64)
		}
		// Without signatures (what every release reads) the infos lose
		// theirs; with them, nothing changes.
		unsigned := st.clone()
		for n, p := range unsigned.peers {
			p.Writer, p.Sig = "", nil
			unsigned.peers[n] = p
		}
		for _, signed := range []bool{false, true} {
			want := unsigned
			if signed {
				want = st
			}
			buf := encodeStateAs(pfx, "x", st, signed)
			w, err := decodeState(buf)
			if err != nil {
				t.Fatalf("case %d, signed %v: %v", i, signed, err)
			}
			if w.prefix != pfx || w.sender != "x" || !stateEqual(w.st, want) {
				t.Fatalf("case %d, signed %v: round trip changed the state", i, signed)
			}
			if !bytes.Equal(encodeStateAs(pfx, "x", w.st, signed), buf) {
				t.Fatalf("case %d, signed %v: encoding is not canonical", i, signed)
			}
		}
	}
}
