package ipam

import (
	"context"
	"fmt"
	"testing"
)

// benchState builds the state of an n-peer cluster on the default /12: the
// seeded split, a tenth of the peers having given half of their range to
// late joiners, and each peer publishing 10 held addresses.
func benchState(n int) state {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d.cluster.local", i)
	}
	size := rangeSize(mustPrefix("10.32.0.0/12"))
	st := newState(size)
	st.seed = seed{Members: uint64(n), ID: 0x1234}
	st.ring = seededRing(size, names)
	for i := 0; i < n; i += 10 {
		s := size * uint64(i) / uint64(n)
		e := size * uint64(i+1) / uint64(n)
		joiner := fmt.Sprintf("joiner-%04d.cluster.local", i)
		st.ring = st.ring.update((s+e)/2, e, func(en entry) entry { return entry{Version: en.Version + 1, Owner: joiner} })
		names = append(names, joiner)
	}
	for i, name := range names {
		base := size * uint64(i%n) / uint64(n)
		held := make([]uint64, 10)
		for j := range held {
			held[j] = base + 1 + uint64(j)
		}
		st.peers[name] = peerInfo{Version: 1_780_000_000_000 + uint64(i), ID: fmt.Sprintf("%016x", i), Free: 4000, Held: held}
	}
	return st
}

// BenchmarkStateSize reports the size of the push/pull state.
func BenchmarkStateSize(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n, "peers"), func(b *testing.B) {
			st := benchState(n)
			var buf []byte
			for b.Loop() {
				buf = encodeState(mustPrefix("10.32.0.0/12"), "node-0000.cluster.local", st)
			}
			b.ReportMetric(float64(len(buf)), "bytes")
			b.ReportMetric(float64(len(buf))/float64(len(st.peers)), "bytes/peer")
		})
	}
}

// BenchmarkMerge measures decoding and merging a 1000-peer state.
func BenchmarkMerge(b *testing.B) {
	st := benchState(1000)
	buf := encodeState(mustPrefix("10.32.0.0/12"), "x", st)
	for b.Loop() {
		w, err := decodeState(buf)
		if err != nil {
			b.Fatal(err)
		}
		_ = join(st, w.st)
	}
}

// BenchmarkAllocate measures in-process allocation latency, with and
// without the fsync of the state file.
func BenchmarkAllocate(b *testing.B) {
	for _, disk := range []bool{false, true} {
		b.Run(map[bool]string{false: "memory", true: "disk"}[disk], func(b *testing.B) {
			cfg := testConfig(b, "a", "10.32.0.0/12")
			if !disk {
				cfg.StateFile = ""
			}
			a := mustNew(b, cfg, nil)
			ctx := context.Background()
			i := 0
			for b.Loop() {
				// Keep about 200 pods, the realistic per-node load.
				if i >= 200 {
					if err := a.Release(fmt.Sprint("c", i-200), "eth0"); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := a.Allocate(ctx, fmt.Sprint("c", i), "eth0"); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
