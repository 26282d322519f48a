package ipam

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"testing"
	"time"
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

// BenchmarkAllocateLargeState measures Allocate plus Release, state file on
// disk, on a node of an n-peer cluster holding 60 pods (what fits in its
// share of the /12 at 5000 peers): what a pod's ADD and DEL cost the
// allocator as the cluster grows, with the journal and, side by side,
// rewriting the state file for each as before it (docs/ipam.md,
// "Persistence"). make bench prints the ratio.
func BenchmarkAllocateLargeState(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		for _, how := range []string{"journal", "rewrite"} {
			b.Run(fmt.Sprintf("%dpeers/%s", n, how), func(b *testing.B) {
				cfg := testConfig(b, "node-0000.cluster.local", "10.32.0.0/12")
				a, fileBytes := newFromState(b, cfg, benchState(n), false)
				defer a.Close()
				a.mu.Lock()
				a.journal.off = how == "rewrite"
				a.journal.ok = a.journal.ok && !a.journal.off
				a.mu.Unlock()
				ctx := context.Background()
				for i := range 60 {
					if _, err := a.Allocate(ctx, fmt.Sprint("p", i), "eth0"); err != nil {
						b.Fatal(err)
					}
				}
				i := 0
				for b.Loop() {
					if _, err := a.Allocate(ctx, fmt.Sprint("c", i), "eth0"); err != nil {
						b.Fatal(err)
					}
					if err := a.Release(fmt.Sprint("c", i), "eth0"); err != nil {
						b.Fatal(err)
					}
					i++
				}
				b.ReportMetric(float64(fileBytes), "file-bytes")
			})
		}
	}
}

// BenchmarkMergeAtRest measures a node of a 1000-peer mesh with signed
// infos merging another peer's whole state (a push/pull) at rest: with
// heartbeats, every info in it is newer than the receiver's and each
// signature is verified; without (automatic reclaim off, heartbeatLocked),
// the state is the one the receiver holds and nothing is verified.
func BenchmarkMergeAtRest(b *testing.B) {
	const n, rounds = 1000, 16
	st := benchState(n)
	names := slices.Sorted(maps.Keys(st.peers))
	ids := newTestIdentities(names...)
	prefix := mustPrefix("10.32.0.0/12")
	sign := func(st state) {
		for name, p := range st.peers {
			p.Writer = name
			p.Sig = ids.node(name).Sign(infoSigBytes(prefix, name, p))
			st.peers[name] = p
		}
	}
	sign(st)
	for _, how := range []string{"heartbeats", "unchanged"} {
		b.Run(how, func(b *testing.B) {
			cfg := testConfig(b, names[0], prefix.String())
			cfg.Identities = ids.node(names[0])
			cfg.IsMember = func(string) bool { return true }
			// The clock of benchState's versions, which lie within
			// maxClockAhead of it.
			cfg.Now = func() time.Time { return time.UnixMilli(1_780_000_100_000) }
			a, _ := newFromState(b, cfg, st.clone(), true)
			defer a.Close()
			// The states a peer would send in successive push/pulls.
			msgs := make([][]byte, rounds)
			for i := range msgs {
				next := st.clone()
				if how == "heartbeats" {
					for name, p := range next.peers {
						p.Version += uint64(i + 1)
						next.peers[name] = p
					}
					sign(next)
				}
				msgs[i] = encodeStateAs(prefix, names[1], next, true)
			}
			i := 0
			for b.Loop() {
				if i == rounds {
					b.Fatalf("more than %d rounds: run with -benchtime %dx", rounds, rounds)
				}
				if err := a.MergeRemoteState(msgs[i]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			a.mu.Lock()
			got := a.st.peers[names[1]].Version
			a.mu.Unlock()
			if want := st.peers[names[1]].Version; how == "heartbeats" && got != want+uint64(i) || len(a.Status().Rejected) != 0 {
				b.Fatalf("after %d merges: version %d (was %d), refused %v", i, got, want, a.Status().Rejected)
			}
		})
	}
}

// newFromState starts an allocator from a state file holding st (signed
// infos sent as such with signedWire), and returns it with the file's size.
func newFromState(b *testing.B, cfg Config, st state, signedWire bool) (*Allocator, int) {
	b.Helper()
	data, err := encodeFile(cfg, cfg.SelfID, st, nil, paxosDurable{}, gateway{}, 0, signedWire)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(cfg.StateFile, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return mustNew(b, cfg, nil), len(data)
}
