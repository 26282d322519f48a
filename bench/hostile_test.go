//go:build bench

package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// hostileSecs is how long the hostile peer floods.
var hostileSecs = envInt("BENCH_HOSTILE_SECONDS", 20)

// hostilePods is the honest node's pod count in the steady flood: each
// Allocate is followed by the Release of the oldest address beyond it, as
// pods come and go on a node at Kubernetes' default of at most 110 pods.
var hostilePods = envInt("BENCH_HOSTILE_PODS", 110)

// hostileResult is Allocate's latency on an honest node without and with
// a hostile peer's flood.
type hostileResult struct {
	calm, flood []time.Duration
	// steady: Allocate during a second flood, with the node's addresses
	// kept at hostilePods by releasing the oldest.
	steady []time.Duration
	sent   string // what the hostile peer says it sent
	err    string
	// CPU seconds used during the flood by the honest node's daemon and
	// by the hostile process, and the flood's wall-clock seconds: the
	// machine has 2 cores, shared with the other daemons and other work.
	cpuHonest, cpuEvil, wall float64
	cpuCalm, calmWall        float64 // the same without the flood
}

// benchHostile: three daemons; Allocate one after another through the
// control socket of the first, first alone, then while a fourth process
// holding the mesh key floods every node with forged and oversized IPAM
// states (e2e/testdata/hostile, the program of e2e's TestHostilePeer).
func benchHostile(t *testing.T, r *report) {
	res := &hostileResult{}
	r.hostile = res
	tn := testnet.New(t, testnet.Options{Hosts: 4, Prefix: "bhos"})
	hosts := tn.Hosts()
	var nodes []*node
	for i, h := range hosts[:3] {
		var peers []*testnet.Host
		if i > 0 {
			peers = hosts[:1]
		}
		nodes = append(nodes, launch(t, h, peers))
	}
	if err := waitReady(nodes, 90*time.Second); err != nil {
		res.err = err.Error()
		t.Fatalf("mesh: %v", err)
	}
	honest := nodes[0]
	var held []string // container IDs, oldest first
	// allocate calls Allocate until until says stop; with keep > 0 it
	// then releases the oldest addresses beyond keep (not timed).
	allocate := func(tag string, keep int, until func(i int) bool) []time.Duration {
		var d []time.Duration
		for i := 0; !until(i) && i < 100000; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			id := fmt.Sprintf("%s-%d", tag, i)
			start := time.Now()
			_, err := honest.api.Allocate(ctx, id, "eth0")
			took := time.Since(start)
			held = append(held, id)
			for err == nil && keep > 0 && len(held) > keep {
				err = honest.api.Release(ctx, held[0], "eth0")
				held = held[1:]
			}
			cancel()
			if err != nil {
				res.err = err.Error()
				t.Fatalf("Allocate or Release: %v", err)
			}
			d = append(d, took)
		}
		return d
	}
	calmCPU, calmStart := cpuSeconds(honest.Proc.PID()), time.Now()
	res.calm = allocate("calm", 0, func(i int) bool { return i == ipamOps })
	res.calmWall, res.cpuCalm = time.Since(calmStart).Seconds(), cpuSeconds(honest.Proc.PID())-calmCPU

	evilHost := hosts[3]
	flood := func(tag string, keep int) []time.Duration {
		args := append([]string{"--name", "evil-" + tag, "--addr", evilHost.Addr.String(),
			"--peer", hosts[0].Addr.String() + ":6783", "--victim", hosts[1].Name, "--other", hosts[2].Name,
			"--duration", fmt.Sprintf("%ds", hostileSecs)}, meshtest.KeyFileArgs(t, evilHost)...)
		evil := evilHost.Start(t, testnet.BuildBinary(t, "./e2e/testdata/hostile"), args, nil)
		if err := testnet.Poll(60*time.Second, 100*time.Millisecond, func() error {
			if evil.Exited() {
				return fmt.Errorf("hostile peer exited:\n%s", evil.Log())
			}
			if !strings.Contains(evil.Log(), "flooding") {
				return fmt.Errorf("hostile peer has not joined")
			}
			return nil
		}); err != nil {
			res.err = err.Error()
			t.Fatal(err)
		}
		honestCPU := cpuSeconds(honest.Proc.PID())
		floodStart := time.Now()
		d := allocate(tag, keep, func(int) bool {
			if c := cpuSeconds(evil.PID()); c > 0 && keep == 0 {
				res.cpuEvil = c
			}
			return evil.Exited()
		})
		if keep == 0 {
			res.wall = time.Since(floodStart).Seconds()
			res.cpuHonest = cpuSeconds(honest.Proc.PID()) - honestCPU
		}
		if err := evil.Wait(30 * time.Second); err != nil {
			res.err = err.Error()
			t.Fatalf("hostile peer: %v\n%s", err, evil.Log())
		}
		for _, l := range strings.Split(evil.Log(), "\n") {
			if s, ok := strings.CutPrefix(strings.TrimSpace(l), "sent "); ok && keep == 0 {
				res.sent = s
			}
		}
		return d
	}
	res.flood = flood("flood", 0)
	// The node now holds every address it was given: back to a node's
	// pod count, then a second flood with pods coming and going.
	for len(held) > hostilePods {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := honest.api.Release(ctx, held[0], "eth0")
		cancel()
		if err != nil {
			res.err = err.Error()
			t.Fatalf("Release: %v", err)
		}
		held = held[1:]
	}
	res.steady = flood("steady", hostilePods)
}

// cpuSeconds is a process's user + system CPU time, 0 if unknown.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b)[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100 // USER_HZ
}

func (h *hostileResult) print(p func(string, ...any)) {
	p("\n8. Allocate on an honest node (control socket, one after another), alone and while a peer holding the key floods forged and oversized IPAM states\n")
	if h == nil || len(h.calm) == 0 || len(h.flood) == 0 {
		msg := "see the test log"
		if h != nil && h.err != "" {
			msg = firstLine(h.err)
		}
		p("   not measured: %s\n", msg)
		return
	}
	p("   %-34s %10s %10s %10s %8s\n", "", "p50", "p99", "max", "calls")
	p("   %-34s %10s %10s %10s %8d\n", "without the flood", ms(pct(h.calm, .5)), ms(pct(h.calm, .99)), ms(pct(h.calm, 1)), len(h.calm))
	p("   %-34s %10s %10s %10s %8d\n", fmt.Sprintf("during the flood (%d s)", hostileSecs), ms(pct(h.flood, .5)), ms(pct(h.flood, .99)), ms(pct(h.flood, 1)), len(h.flood))
	if len(h.steady) > 0 {
		p("   %-34s %10s %10s %10s %8d\n", fmt.Sprintf("during a 2nd flood, %d pods", hostilePods), ms(pct(h.steady, .5)), ms(pct(h.steady, .99)), ms(pct(h.steady, 1)), len(h.steady))
	}
	p("   hostile peer sent, to each of 3 nodes: %s\n", h.sent)
	p("   CPU of the honest daemon: %.1f s in %.0f s without the flood, %.1f s in %.0f s during it; hostile process %.1f s (2 cores, shared)\n",
		h.cpuCalm, h.calmWall, h.cpuHonest, h.wall, h.cpuEvil)
	p("   goal p99 <= 50 ms during the flood: %s (node holding 1000 to %d addresses)", verdict(pct(h.flood, .99) <= 50*time.Millisecond), len(h.calm)+len(h.flood))
	if len(h.steady) > 0 {
		p(", %s (%d pods coming and going)", verdict(pct(h.steady, .99) <= 50*time.Millisecond), hostilePods)
	}
	p("\n")
}
