package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// floodAllocateBound is the slowest Allocate tolerated on an honest node
// while the hostile peer floods: generous for a loaded 2-core machine (the
// goal, 50 ms at p99, is `make bench`'s figure); before the bounds one
// forged state held the allocator's lock for seconds.
const floodAllocateBound = 5 * time.Second

// TestHostilePeer: three honest daemons and a fourth process holding the
// mesh key that floods the IPAM channel with forged and oversized states
// (e2e/testdata/hostile: a live peer removed at the maximum epoch and
// version, another peer's range beyond a transfer's step, a claim under a
// live node's name from hours ahead, a Held list in another's space and
// one of the whole range, thousands of invented names, a replayed old
// state, claims under a live node's name within every bound: unsigned,
// with a forged signature, a removal signed by the forger; the victim's
// range given to the forger or tombstoned one version ahead, which only
// the release rule stops; three ring forgeries also as deltas, and the
// forger says it reads deltas, so the
// honest nodes announce their ring changes by deltas). Afterwards no
// address is handed out twice, no honest range
// moved, Allocate stayed fast during the flood, the daemons' memory stayed
// bounded, and every kind of refusal is counted in the metric and named
// once in status.
func TestHostilePeer(t *testing.T) { hostilePeer(t) }

// TestHostilePeerWithReclaim is TestHostilePeer with automatic reclaim on:
// every peer runs a lease pool, so the release rule holds the moves of its
// space to the vouches of a majority of the voters (docs/ipam.md,
// "Vouched reclaims"), and the forger's transfer and tombstone of the
// victim's range are refused as without reclaim.
func TestHostilePeerWithReclaim(t *testing.T) {
	hostilePeer(t, "--ipalloc-reclaim-after", "10m")
}

func hostilePeer(t *testing.T, flags ...string) {
	net, nodes := startMesh(t, 3, flags...)
	reclaim := len(flags) > 0
	victim, other := nodes[1], nodes[2]
	before := make([][]api.RangeInfo, len(nodes))
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		for i, n := range nodes {
			st := n.MustStatus().IPAM
			if st.Status != "ready" || len(st.Owned) == 0 {
				return fmt.Errorf("%s: IPAM %q owns %v", n.Host.Name, st.Status, st.Owned)
			}
			before[i] = st.Ranges
			if i > 0 && !slices.Equal(before[i], before[0]) {
				return fmt.Errorf("rings differ: %v / %v", before[i], before[0])
			}
		}
		return nil
	})
	// The flood is against a mesh of this release, which refuses unsigned
	// infos once it has switched to signed states (docs/ipam.md, "Signed
	// peer infos"); before the switch it accepts them, as the previous
	// release did (the upgrade window, documented and tested apart).
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		for _, n := range nodes {
			st := n.MustStatus().IPAM
			if st.SignedStates == nil || !st.SignedStates.Sending {
				return fmt.Errorf("%s does not send signed IPAM states yet: %+v", n.Host.Name, st.SignedStates)
			}
			// And lists its space in its infos (docs/ipam.md, "Signed
			// ring transfers"), for good: the forger joins saying it
			// runs an earlier release, which must not turn it off.
			if !st.OwnedListed {
				return fmt.Errorf("%s does not list its space yet", n.Host.Name)
			}
			if reclaim && !st.ReclaimsVouched {
				return fmt.Errorf("%s does not hold reclaims to vouches yet", n.Host.Name)
			}
		}
		return nil
	})
	rssBefore := make([]int, len(nodes))
	for i, n := range nodes {
		rssBefore[i] = rssKiB(t, n.Proc.PID())
	}
	calm := allocateWhile(t, nodes, "calm", nil, 30)

	evilHost := net.AddHost(t)
	bin := testnet.BuildBinary(t, "./e2e/testdata/hostile")
	evil := evilHost.Start(t, bin, []string{"--name", "evil", "--addr", evilHost.Addr.String(),
		"--peer", nodes[0].Host.Addr.String() + ":6783", "--victim", victim.Host.Name, "--other", other.Host.Name,
		"--duration", "25s", "--deltas"}, meshtest.Env())
	defer func() {
		if t.Failed() {
			t.Logf("hostile peer's output:\n%s", evil.Log())
		}
	}()
	testnet.Eventually(t, 40*time.Second, 250*time.Millisecond, func() error {
		if evil.Exited() {
			return fmt.Errorf("hostile peer exited early:\n%s", evil.Log())
		}
		if !strings.Contains(evil.Log(), "flooding") {
			return fmt.Errorf("hostile peer has not joined yet")
		}
		return nil
	})
	flood := allocateWhile(t, nodes, "flood", evil.Done(), 0)
	if err := evil.Wait(30 * time.Second); err != nil {
		t.Fatalf("hostile peer: %v\n%s", err, evil.Log())
	}
	t.Logf("hostile peer: %s", strings.TrimSpace(evil.Log()))
	t.Logf("Allocate on honest nodes: calm p50 %v p99 %v (%d); during the flood p50 %v p99 %v max %v (%d)",
		calm.pct(50), calm.pct(99), len(calm.d), flood.pct(50), flood.pct(99), flood.pct(100), len(flood.d))
	if len(flood.d) < 10 {
		t.Fatalf("only %d allocations during the flood", len(flood.d))
	}
	bound := floodAllocateBound
	if reclaim {
		// A pod beyond the lease pool waits for the echoes of the next
		// pool (an echo request every 2 ticks): about 2 s calm or not.
		bound += 3 * time.Second
	}
	if worst := flood.pct(100); worst > bound {
		t.Errorf("slowest Allocate during the flood took %v (bound %v)", worst, bound)
	}

	// No address twice, across calm and flood, over all nodes.
	seen := map[string]string{}
	for _, a := range append(calm.addrs, flood.addrs...) {
		if by, dup := seen[a.addr]; dup {
			t.Errorf("address %s handed out by %s and %s", a.addr, by, a.node)
		}
		seen[a.addr] = a.node
	}
	// The last three are the claims under the victim's name within every
	// bound (unsigned, a forged signature, a removal signed by the
	// forger): only the signatures of peer infos stop them.
	// The last one is the victim's range given away or tombstoned one
	// version ahead: only the release rule stops it.
	wantReasons := []string{"counter", "future-version", "held", "unknown-peer", "oversized", "unsigned-info", "bad-info-signature", "unknown-signer", "unreleased-transfer"}
	for i, n := range nodes {
		st := n.MustStatus()
		if !slices.Equal(st.IPAM.Ranges, before[i]) {
			t.Errorf("%s's ring moved: %v, was %v", n.Host.Name, st.IPAM.Ranges, before[i])
		}
		if len(st.IPAM.Peers) > len(nodes)+1 {
			t.Errorf("%s's IPAM knows %d peers", n.Host.Name, len(st.IPAM.Peers))
		}
		for _, p := range st.IPAM.Peers {
			if p.Name == "evil" && p.Addresses != 0 {
				t.Errorf("%s: the forger owns %d addresses", n.Host.Name, p.Addresses)
			}
		}
		_, metrics, err := httpGet(n.Host, "http://127.0.0.1:6782/metrics")
		if err != nil {
			t.Fatalf("%s: metrics: %v", n.Host.Name, err)
		}
		for _, r := range wantReasons {
			named := 0
			for _, p := range st.IPAM.Problems {
				if strings.Contains(p, "("+r+")") {
					named++
				}
			}
			if named != 1 {
				t.Errorf("%s: refusals %q named %d times in status problems %q", n.Host.Name, r, named, st.IPAM.Problems)
			}
			m := regexp.MustCompile(`mesh_ipam_rejected_total\{reason="` + r + `"\} (\d+)`).FindStringSubmatch(metrics)
			if m == nil || m[1] == "0" {
				t.Errorf("%s: metric mesh_ipam_rejected_total{reason=%q} = %v", n.Host.Name, r, m)
			}
		}
		for _, p := range st.IPAM.Problems {
			if strings.Contains(p, "was removed") {
				t.Errorf("%s took the forged removal: %q", n.Host.Name, p)
			}
		}
		if len(st.IPAM.Problems) > 19 {
			t.Errorf("%s: %d problems", n.Host.Name, len(st.IPAM.Problems))
		}
		rss := rssKiB(t, n.Proc.PID())
		t.Logf("%s: resident memory %d KiB before, %d KiB after", n.Host.Name, rssBefore[i], rss)
		if rss > rssBefore[i]+128<<10 || rss > 512<<10 {
			t.Errorf("%s: resident memory grew from %d to %d KiB", n.Host.Name, rssBefore[i], rss)
		}
	}
	for _, n := range nodes {
		for _, p := range n.MustStatus().Peers {
			// Suspect may come and go on a loaded machine; the flood
			// must not have made it dead or gone.
			if p.Name == victim.Host.Name && !p.State.Live() {
				t.Errorf("%s sees the victim %s", n.Host.Name, p.State)
			}
		}
	}
}

type hostileAlloc struct{ node, addr string }

type latencies struct {
	d     []time.Duration
	addrs []hostileAlloc
}

// pct returns the p-th percentile (100 = the maximum).
func (l latencies) pct(p int) time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

// allocateWhile allocates on every node in parallel, one address every
// 50 ms per node, until stop is closed, or count per node when stop is
// nil, and returns the latencies.
func allocateWhile(t *testing.T, nodes []*node, tag string, stop <-chan struct{}, count int) latencies {
	t.Helper()
	var mu sync.Mutex
	var out latencies
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := n.Client()
			for i := 0; i < 2000; i++ {
				if stop == nil && i == count {
					return
				}
				if stop != nil {
					select {
					case <-stop:
						return
					default:
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*floodAllocateBound)
				start := time.Now()
				a, err := c.Allocate(ctx, fmt.Sprintf("%s-%s-%d", tag, n.Host.Name, i), "eth0")
				d := time.Since(start)
				cancel()
				mu.Lock()
				if err != nil {
					t.Errorf("%s: Allocate: %v", n.Host.Name, err)
				} else {
					out.d = append(out.d, d)
					out.addrs = append(out.addrs, hostileAlloc{n.Host.Name, a.Address})
				}
				mu.Unlock()
				if err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return out
}

// rssKiB is a process's resident memory.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}
