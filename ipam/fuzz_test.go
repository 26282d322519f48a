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
}

// FuzzMergeRemoteState: arbitrary bytes never panic and never corrupt the
// receiver; whatever is accepted leaves a state that encodes and decodes.
func FuzzMergeRemoteState(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, buf []byte) {
		a := mustNew(t, Config{Range: mustPrefix("10.0.0.0/24"), Self: "a"}, nil)
		mustAlloc(t, a, "c1", "eth0")
		err := a.MergeRemoteState(buf)
		if err != nil && !errors.Is(err, ErrCorruptState) && !errors.Is(err, ErrRangeMismatch) {
			t.Fatalf("unexpected error class: %v", err)
		}
		_ = a.HandleMessage("x", append([]byte{msgState}, buf...))
		_ = a.HandleMessage("x", buf)
		if _, err := decodeState(a.LocalState()); err != nil {
			t.Fatalf("state no longer encodes: %v", err)
		}
		_ = a.Status()
		a.Tick()
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
	good, _ := encodeFile(cfg, "id", st, []Allocation{{ContainerID: "c1", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.5")}}, paxosDurable{}, gateway{}, 0)
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
	})
}
