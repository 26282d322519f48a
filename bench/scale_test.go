//go:build bench

package bench

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scaleResult is part 10: what the NetworkPolicy controller and the
// userspace data plane cost at cluster scale, read from the packages' own
// scale tests (their internals are not exported).
type scaleResult struct {
	// ops of one change on the same node in a cluster of 1,000 and of
	// 10,000 pods (policy TestApplyWorkPerChange).
	opsSmall, opsLarge map[string]int
	changes            []string // in order
	fullSmall          int
	fullLarge          int
	// The lines of policy TestControllerScale and fastdp
	// TestWireGuardPeersScale with their figures.
	controller, wireguard []string
	// The tables of ipam TestScaleGossipBytes and TestScaleConvergence
	// (simulation).
	gossip, convergence []string
	err                 []string
}

var (
	workRE  = regexp.MustCompile(`scale_test.go:\d+: (.+?)\s+(\d+) operations at 1,000 pods,\s+(\d+) at 10,000 pods`)
	fullRE  = regexp.MustCompile(`whole table: (\d+) operations at 1000 pods, (\d+) at 10000 pods`)
	logLine = regexp.MustCompile(`(?m)^\s+\S+_test\.go:\d+: (.*)$`)
)

// Sizes of the IPAM simulations of part 10 (BENCH_IPAM_GOSSIP_SIZES,
// BENCH_IPAM_CONV_SIZES): the convergence's memory grows with N² (3.7
// GiB at 1000 peers), so it stops at 300 unless asked.
var (
	gossipSizes = envString("BENCH_IPAM_GOSSIP_SIZES", "100,1000")
	convSizes   = envString("BENCH_IPAM_CONV_SIZES", "100,300")
)

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// goTestLog runs one test of a package verbosely and returns its output.
func goTestLog(t *testing.T, pkg, test string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := append([]string{"test", "-count=1", "-timeout", "30m", "-run", "^" + test + "$", "-v", pkg}, args...)
	out, err := exec.CommandContext(ctx, "go", cmd...).CombinedOutput()
	return string(out), err
}

// tableLines returns the lines of out from the first that starts (after
// blanks) with header up to the first empty one.
func tableLines(out, header string) []string {
	var lines []string
	on := false
	for _, l := range strings.Split(out, "\n") {
		tl := strings.TrimSpace(l)
		if !on && strings.HasPrefix(tl, header) {
			on = true
		}
		if !on {
			continue
		}
		if tl == "" || strings.HasPrefix(tl, "---") || strings.HasPrefix(tl, "===") {
			break
		}
		lines = append(lines, tl)
	}
	return lines
}

func benchScale(t *testing.T, r *report) {
	res := &scaleResult{opsSmall: map[string]int{}, opsLarge: map[string]int{}}
	r.scale = res
	out, err := goTestLog(t, "../policy/", "TestApplyWorkPerChange")
	if err != nil {
		res.err = append(res.err, "policy TestApplyWorkPerChange: "+err.Error())
		t.Errorf("policy TestApplyWorkPerChange: %v\n%s", err, out)
	}
	for _, m := range workRE.FindAllStringSubmatch(out, -1) {
		name := strings.TrimSpace(m[1])
		res.changes = append(res.changes, name)
		res.opsSmall[name], _ = strconv.Atoi(m[2])
		res.opsLarge[name], _ = strconv.Atoi(m[3])
	}
	if m := fullRE.FindStringSubmatch(out); m != nil {
		res.fullSmall, _ = strconv.Atoi(m[1])
		res.fullLarge, _ = strconv.Atoi(m[2])
	}
	for _, x := range []struct {
		pkg, test, marker string
		dst               *[]string
	}{
		{"../policy/", "TestControllerScale", "policy controller", &res.controller},
		{"../fastdp/", "TestWireGuardPeersScale", "userspace data plane", &res.wireguard},
	} {
		out, err := goTestLog(t, x.pkg, x.test)
		if err != nil {
			res.err = append(res.err, x.test+": "+err.Error())
			t.Errorf("%s: %v\n%s", x.test, err, out)
		}
		on := false
		for _, m := range logLine.FindAllStringSubmatch(out, -1) {
			if strings.Contains(m[1], x.marker) {
				on = true
			}
			if on {
				*x.dst = append(*x.dst, strings.TrimSpace(m[1]))
			}
		}
		if len(*x.dst) == 0 {
			t.Errorf("%s printed no figures:\n%s", x.test, out)
		}
	}
	for _, x := range []struct {
		test, flag, sizes, header string
		dst                       *[]string
	}{
		{"TestScaleGossipBytes", "-ipam.scale.sizes=", gossipSizes, "N ", &res.gossip},
		{"TestScaleConvergence", "-ipam.conv.sizes=", convSizes, "N ", &res.convergence},
	} {
		out, err := goTestLog(t, "../ipam/", x.test, x.flag+x.sizes)
		if err != nil {
			res.err = append(res.err, x.test+": "+err.Error())
			t.Errorf("%s: %v\n%s", x.test, err, out)
		}
		*x.dst = tableLines(out, x.header)
		if len(*x.dst) < 2 {
			t.Errorf("%s printed no table:\n%s", x.test, out)
		}
	}
}

func (res *scaleResult) print(p func(string, ...any)) {
	p("\n10. Scale: NetworkPolicy controller on one node (fake API, kernel nftables) and the userspace data plane with many peers\n")
	if res == nil {
		p("   not measured\n")
		return
	}
	for _, e := range res.err {
		p("   failed: %s\n", firstLine(e))
	}
	p("   nftables operations of one change, same node (100 local pods), cluster of 1,000 vs 10,000 pods:\n")
	p("   %-60s %8s %8s %8s\n", "", "1,000", "10,000", "ratio")
	for _, c := range res.changes {
		ratio := "-"
		if res.opsSmall[c] > 0 {
			ratio = strconv.FormatFloat(float64(res.opsLarge[c])/float64(res.opsSmall[c]), 'f', 2, 64)
		}
		p("   %-60s %8d %8d %8s\n", c, res.opsSmall[c], res.opsLarge[c], ratio)
	}
	if res.fullSmall > 0 {
		p("   %-60s %8d %8d %8.2f\n", "(a rewrite of the whole table, for comparison)", res.fullSmall, res.fullLarge, float64(res.fullLarge)/float64(res.fullSmall))
	}
	for _, l := range res.controller {
		p("   %s\n", l)
	}
	for _, l := range res.wireguard {
		p("   %s\n", l)
	}
	p("   IPAM gossip bytes by mesh size (simulation; ipam TestScaleGossipBytes, N = %s; docs/scale.md says what each column counts):\n", gossipSizes)
	for _, l := range res.gossip {
		p("   %s\n", l)
	}
	p("   IPAM convergence after one event (simulation; ipam TestScaleConvergence, N = %s):\n", convSizes)
	for _, l := range res.convergence {
		p("   %s\n", l)
	}
}
