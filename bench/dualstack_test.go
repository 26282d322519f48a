//go:build bench

package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// dualResult is part 11: pod-to-pod throughput over the IPv4 and the IPv6
// overlay of one pair of dual-stack daemons, the two families run back to
// back in each round.
type dualResult struct {
	tput map[string][]float64 // "IPv4", "IPv6": bits/s per round
	err  string
}

// dualFamilies are the rows of part 11, IPv4 first.
var dualFamilies = []string{"IPv4", "IPv6"}

// benchDualStack: two dual-stack hosts with a pod each (podPair), iperf3
// from the pod on host1 to the pod on host2 over both families, in
// iperfRounds rounds whose order alternates (so neither family always
// runs first under a changing load).
func benchDualStack(t *testing.T, r *report) {
	res := &dualResult{tput: map[string][]float64{}}
	r.dual = res
	fail := func(format string, a ...any) {
		res.err = fmt.Sprintf(format, a...)
		t.Error(res.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, a, b, pods, err := podPair(ctx, t, "bds", "ds", dualStackArgs...)
	if err != nil {
		fail("dual-stack pod pair: %v", err)
		return
	}
	if !pods[1].IP6.IsValid() {
		fail("the pods have no IPv6 address: %s, %s", pods[0].IP, pods[1].IP)
		return
	}
	b.Host.Start(t, "ip", []string{"netns", "exec", pods[1].Name, "iperf3", "-s"}, nil)
	addr := map[string]string{"IPv4": pods[1].IP.String(), "IPv6": pods[1].IP6.String()}
	for round := range iperfRounds {
		order := slices.Clone(dualFamilies)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, fam := range order {
			bps, err := iperfIn(a.Host, pods[0].Name, addr[fam], iperfSecs)
			if err != nil {
				fail("iperf3 pod to pod over %s (%s), round %d: %v", fam, addr[fam], round+1, err)
				return
			}
			res.tput[fam] = append(res.tput[fam], bps)
		}
	}
}

func (res *dualResult) print(p func(string, ...any)) {
	p("\n11. Dual-stack overlay, iperf3 single TCP stream pod on host1 -> pod on host2, %d s x %d rounds, both families per round\n", iperfSecs, iperfRounds)
	if res == nil {
		p("   not measured\n")
		return
	}
	if res.err != "" {
		p("   failed: %s\n", firstLine(res.err))
	}
	for _, fam := range dualFamilies {
		v := res.tput[fam]
		if len(v) == 0 {
			continue
		}
		var rs []string
		for _, x := range v {
			rs = append(rs, fmt.Sprintf("%.2f", x/1e9))
		}
		p("   %-34s %8.2f Gbit/s   (rounds: %s)\n", "pod to pod over "+fam, mean(v)/1e9, strings.Join(rs, ", "))
	}
	v4, v6 := res.tput["IPv4"], res.tput["IPv6"]
	if len(v4) > 0 && len(v6) > 0 {
		med, txt := pairedRatios(v6, v4)
		p("   ratio IPv6/IPv4                 %.2f of the means, median per round %.2f (rounds: %s)\n", mean(v6)/mean(v4), med, txt)
	}
}

// pairedRatios are the ratios a[i]/b[i] of runs of one round (run back to
// back, so they share the machine's load): their median and the list.
func pairedRatios(a, b []float64) (float64, string) {
	var rs []float64
	var txt []string
	for i := range min(len(a), len(b)) {
		rs = append(rs, a[i]/b[i])
		txt = append(txt, fmt.Sprintf("%.2f", rs[len(rs)-1]))
	}
	if len(rs) == 0 {
		return 0, ""
	}
	s := slices.Clone(rs)
	slices.Sort(s)
	return s[(len(s)-1)/2], strings.Join(txt, ", ")
}
