//go:build bench

package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// churnOps is how many Allocate+Release pairs the quiet phase measures,
// churnSecs how long the fault schedule runs (Allocate+Release pairs every
// 50 ms meanwhile); BENCH_CHURN_SEED seeds the schedule.
var (
	churnOps  = envInt("BENCH_CHURN_OPS", 300)
	churnSecs = envInt("BENCH_CHURN_SECONDS", 60)
	churnSeed = uint64(envInt("BENCH_CHURN_SEED", 1))
)

// churnResult is Allocate latency on one node with the other peers quiet,
// then while they restart and partitions come and heal.
type churnResult struct {
	quiet, churn []time.Duration
	failed       int      // Allocate calls that failed during the churn
	schedule     []string // the faults, in order
}

// benchChurn measures Allocate through the control socket of host1 of five
// peers with reclaim on, first quiet, then under a seeded schedule of kill
// -9 and SIGTERM with restarts of the other peers, symmetric and one-way
// partitions (host1 included) and heals, as in e2e's TestFaultInjection.
func benchChurn(t *testing.T, r *report) {
	tn := testnet.New(t, testnet.Options{Hosts: 5, Prefix: "bchurn"})
	hosts := tn.Hosts()
	var nodes []*node
	for i, h := range hosts {
		var peers []*testnet.Host
		for j, p := range hosts {
			if j != i {
				peers = append(peers, p)
			}
		}
		nodes = append(nodes, launch(t, h, peers, "--ipalloc-range", "10.44.0.0/22", "--ipalloc-reclaim-after", "20s"))
	}
	if err := waitReady(nodes, 90*time.Second); err != nil {
		t.Fatalf("five-host mesh: %v", err)
	}
	n := nodes[0]
	res := &churnResult{}
	r.churn = res
	measure := func(phase string, ops int, stop <-chan struct{}) (lat []time.Duration, failed int) {
		for i := range ops {
			select {
			case <-stop:
				return lat, failed
			default:
			}
			id := fmt.Sprintf("churn-%s-%d", phase, i)
			ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
			s := time.Now()
			_, err := n.api.Allocate(ctx, id, "eth0")
			d := time.Since(s)
			if err == nil {
				lat = append(lat, d)
				err = n.api.Release(ctx, id, "eth0")
			} else {
				failed++
			}
			cancel()
			if err != nil && phase == "quiet" {
				t.Fatalf("quiet Allocate/Release #%d: %v", i, err)
			}
			// Spread the calls over the schedule instead of
			// measuring a burst between two faults.
			if phase == "churn" {
				time.Sleep(50 * time.Millisecond)
			}
		}
		return lat, failed
	}
	res.quiet, _ = measure("quiet", churnOps, nil)

	rng := rand.New(rand.NewPCG(churnSeed, 0x6d657368))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.churn, res.failed = measure("churn", math.MaxInt, stop)
	}()
	down := map[int]bool{}
	logf := func(format string, a ...any) { res.schedule = append(res.schedule, fmt.Sprintf(format, a...)) }
	for end := time.Now().Add(time.Duration(churnSecs) * time.Second); time.Now().Before(end); {
		i := 1 + rng.IntN(len(nodes)-1) // host1 is measured, never stopped
		switch k := rng.IntN(100); {
		case k < 35:
			if down[i] {
				logf("restart %s", hosts[i].Name)
				nodes[i].Start()
				delete(down, i)
			} else if len(down) < 2 {
				if rng.IntN(2) == 0 {
					logf("kill -9 %s", hosts[i].Name)
					nodes[i].Proc.Kill()
				} else {
					logf("SIGTERM %s", hosts[i].Name)
					nodes[i].Proc.Stop(15 * time.Second)
				}
				down[i] = true
			}
		case k < 55:
			a, b := hosts[:1+rng.IntN(2)], hosts[3:]
			logf("partition %s|%s", names(a), names(b))
			if err := tn.Partition(a, b); err != nil {
				t.Fatal(err)
			}
		case k < 70:
			logf("one-way %s->host1", hosts[i].Name)
			if err := tn.PartitionOneWay(hosts[i:i+1], hosts[:1]); err != nil {
				t.Fatal(err)
			}
		default:
			logf("heal")
			if err := tn.Heal(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Duration(1000+rng.IntN(3000)) * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if err := tn.Heal(); err != nil {
		t.Fatal(err)
	}
	for i := range down {
		nodes[i].Start()
	}
}

func names(hs []*testnet.Host) string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return strings.Join(out, ",")
}

func (c *churnResult) print(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("   %-34s %10s %10s %10s\n", "Allocate on host1 of 5, reclaim on", "p50", "p99", "max")
	p("   %-34s %10s %10s %10s\n", "quiet", ms(pct(c.quiet, .5)), ms(pct(c.quiet, .99)), ms(pct(c.quiet, 1)))
	p("   %-34s %10s %10s %10s   (%d failed of %d)\n", "peers restart, partitions heal", ms(pct(c.churn, .5)), ms(pct(c.churn, .99)), ms(pct(c.churn, 1)), c.failed, len(c.churn)+c.failed)
	p("   schedule (seed %d, %d s, a step every 1-4 s): %s\n", churnSeed, churnSecs, strings.Join(c.schedule, "; "))
}
