//go:build bench

package bench

import (
	"context"
	"errors"
	"fmt"
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
	// The sizes left out for want of memory (fitSizes).
	gossipSkipped, convSkipped []string
	// The figures of e2e TestConvergence, real daemons on simulated
	// hosts, per size.
	hosts [][]string
	err   []string
}

var (
	workRE  = regexp.MustCompile(`scale_test.go:\d+: (.+?)\s+(\d+) operations at 1,000 pods,\s+(\d+) at 10,000 pods`)
	fullRE  = regexp.MustCompile(`whole table: (\d+) operations at 1000 pods, (\d+) at 10000 pods`)
	logLine = regexp.MustCompile(`(?m)^\s+\S+_test\.go:\d+: (.*)$`)
)

// Sizes of the IPAM simulations of part 10 (BENCH_IPAM_GOSSIP_SIZES,
// BENCH_IPAM_CONV_SIZES): the convergence's memory grows with N² (3.7
// GiB at 1000 peers), so it stops at 300 unless asked. The gossip bytes
// go to 5000 peers (about 12 minutes) where the memory allows it
// (simPairBytes).
var (
	gossipSizes = envString("BENCH_IPAM_GOSSIP_SIZES", "100,1000,5000")
	convSizes   = envString("BENCH_IPAM_CONV_SIZES", "100,300")
)

// simPairBytes is what one replica-peer pair of a settled IPAM simulation
// holds, at most (docs/scale.md measures about 600 bytes): N simulated
// peers need N² of it, 15 GiB at 5000.
const simPairBytes = 640

// simHeadroom is the memory left to everything else while a simulation
// runs: its memory limit (GOMEMLIMIT) is what the machine has available
// less this.
const simHeadroom = 3 << 30

// fitSizes splits sizes into those whose simulation fits in avail bytes of
// memory and those that do not.
func fitSizes(sizes string, avail int64) (fit, skipped []string) {
	for _, f := range strings.Split(sizes, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseInt(f, 10, 64)
		if err == nil && n*n*simPairBytes > avail-simHeadroom {
			skipped = append(skipped, f)
			continue
		}
		fit = append(fit, f) // a bad size is the test's to refuse
	}
	return fit, skipped
}

// memAvailable is the kernel's estimate of the memory available to a new
// process (MemAvailable in /proc/meminfo), in bytes.
func memAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read MemAvailable: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("read MemAvailable: not in /proc/meminfo")
}

// hostSizes are the numbers of simulated hosts with real daemons the scale
// part launches (e2e TestConvergence, with the settings it gives each
// size; at 100 it reports host1's reach against the 30 s goal); 100 takes
// about 6 minutes.
var hostSizes = envString("BENCH_CONVERGENCE_HOSTS", "20,50,100")

// hostFigure matches the lines of e2e TestConvergence that carry its
// figures.
var hostFigure = regexp.MustCompile(`^(\d+ hosts|\d+ daemons launched|coordinate changes per daemon)`)

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// goTestLog runs one test of a package verbosely and returns its output.
func goTestLog(t *testing.T, pkg, test string, args ...string) (string, error) {
	return goTestLogEnv(t, nil, pkg, test, args...)
}

// goTestLogEnv is goTestLog with env added to the test's environment.
func goTestLogEnv(t *testing.T, env []string, pkg, test string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"test", "-count=1", "-timeout", "30m", "-run", "^" + test + "$", "-v", pkg}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
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
	avail, err := memAvailable()
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		test, flag, sizes, header string
		dst                       *[]string
		skipped                   *[]string
	}{
		{"TestScaleGossipBytes", "-ipam.scale.sizes=", gossipSizes, "N ", &res.gossip, &res.gossipSkipped},
		{"TestScaleConvergence", "-ipam.conv.sizes=", convSizes, "N ", &res.convergence, &res.convSkipped},
	} {
		var fit []string
		fit, *x.skipped = fitSizes(x.sizes, avail)
		if len(fit) == 0 {
			continue
		}
		out, err := goTestLogEnv(t, []string{fmt.Sprintf("GOMEMLIMIT=%d", avail-simHeadroom)}, "../ipam/", x.test, x.flag+strings.Join(fit, ","))
		if err != nil {
			res.err = append(res.err, x.test+": "+err.Error())
			t.Errorf("%s: %v\n%s", x.test, err, out)
		}
		*x.dst = tableLines(out, x.header)
		if len(*x.dst) < 2 {
			t.Errorf("%s printed no table:\n%s", x.test, out)
		}
	}
	for _, f := range strings.Split(hostSizes, ",") {
		n := strings.TrimSpace(f)
		out, err := goTestLogEnv(t, []string{"MESH_CONVERGENCE_HOSTS=" + n}, "../e2e/", "TestConvergence")
		if err != nil {
			res.err = append(res.err, "TestConvergence with "+n+" hosts: "+err.Error())
			t.Errorf("TestConvergence with %s hosts: %v\n%s", n, err, out)
		}
		var lines []string
		for _, m := range logLine.FindAllStringSubmatch(out, -1) {
			if l := strings.TrimSpace(m[1]); hostFigure.MatchString(l) {
				lines = append(lines, l)
			}
		}
		if len(lines) < 4 {
			t.Errorf("TestConvergence with %s hosts printed no figures:\n%s", n, out)
		}
		res.hosts = append(res.hosts, lines)
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
	if len(res.gossipSkipped) > 0 {
		p("   not run for want of memory: N = %s (N² x %d bytes and %d GiB of headroom; docs/scale.md has the 5000 figures)\n", strings.Join(res.gossipSkipped, ","), simPairBytes, simHeadroom>>30)
	}
	p("   IPAM convergence after one event (simulation; ipam TestScaleConvergence, N = %s):\n", convSizes)
	for _, l := range res.convergence {
		p("   %s\n", l)
	}
	if len(res.convSkipped) > 0 {
		p("   not run for want of memory: N = %s\n", strings.Join(res.convSkipped, ","))
	}
	p("   Real daemons on simulated hosts (e2e TestConvergence, hosts = %s; docs/scale.md has the table of every size measured):\n", hostSizes)
	for _, lines := range res.hosts {
		for _, l := range lines {
			p("   %s\n", l)
		}
	}
}
