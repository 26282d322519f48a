//go:build bench

package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// restartRounds is how often each restart kind is measured.
var restartRounds = envInt("BENCH_RESTART_ROUNDS", 3)

// restartInterval is the probe interval of the restart part.
const restartInterval = 20 * time.Millisecond

type restartSample struct {
	lost, sent int
	gap        time.Duration // longest run of lost probes
	first      time.Duration // launch to the first reply after it; -1: none
}

type restartResult struct {
	kinds map[meshtest.RestartKind][]restartSample
	// dpKill: kill -9 of the mesh-dataplane process (not the daemon),
	// counted from the kill.
	dpKill []restartSample
	// inProcess: SIGTERM + launch with --dataplane-process=off (wireguard-go
	// in the daemon, as before the data-plane process), on a pair of its own.
	inProcess    []restartSample
	inProcessErr string
	joinNew      []time.Duration // launch of a new node to its pod's first reply
	// reach is the time from the last launch of a reachHosts-host mesh
	// until host1 reached every overlay address; -1: not measured.
	reach    time.Duration
	reachErr string
	// bareFirst: start of wireguard-go on the second host of a bare
	// pair, configured by hand, to the first reply through it.
	bareFirst []time.Duration
	bareErr   string
	err       string
}

// benchRestart: two hosts with a pod each; a pod on host1 pings the pod
// on host2 every 20 ms while host2's daemon is restarted (SIGTERM, an
// upgrade to another build, kill -9), restartRounds times each. Then new
// hosts join the running mesh: the time from their `mesh launch` to the
// first reply to a ping from a pod on them (which first needs a range,
// then the pod's ADD).
func benchRestart(t *testing.T, r *report) {
	res := &restartResult{kinds: map[meshtest.RestartKind][]restartSample{}, reach: -1}
	r.restart = res
	fail := func(format string, a ...any) {
		res.err = fmt.Sprintf(format, a...)
		t.Error(res.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	tn, a, b, pods, err := podPair(ctx, t, "brs", "rp")
	if err != nil {
		fail("%v", err)
		return
	}
	hosts := tn.Hosts()
	upgrade := testnet.BuildMakeRevision(t, "HEAD") + "/mesh"
	current := b.Bin
	for round := range restartRounds {
		for _, kind := range []meshtest.RestartKind{meshtest.RestartSIGTERM, meshtest.RestartUpgrade, meshtest.RestartKill} {
			bin := ""
			if kind == meshtest.RestartUpgrade {
				// Back and forth between the two builds.
				bin = upgrade
				if round%2 == 1 {
					bin = current
				}
			}
			s, err := restartRound(t, pods, func() (time.Time, error) { return meshtest.Restart(b.Node, kind, bin) })
			b.api = b.Client()
			if err != nil {
				fail("%s: %v", kind, err)
				return
			}
			t.Logf("%s round %d: %s", kind, round+1, s)
			res.kinds[kind] = append(res.kinds[kind], s)
			if err := meshtest.CheckNothingLeftBehind(ctx, b.Node); err != nil {
				fail("after %s: %v", kind, err)
			}
		}
	}
	// The data-plane process itself dies; the daemon starts a new one.
	for round := range restartRounds {
		s, err := restartRound(t, pods, func() (time.Time, error) {
			dp := b.MustStatus().DataplaneProcess
			if dp == nil || dp.PID == 0 {
				return time.Time{}, fmt.Errorf("%s runs no data-plane process: %+v", b.Host.Name, dp)
			}
			return time.Now(), syscall.Kill(dp.PID, syscall.SIGKILL)
		})
		if err != nil {
			fail("kill -9 of the data-plane process: %v", err)
			return
		}
		t.Logf("kill -9 of the data-plane process, round %d: %s", round+1, s)
		res.dpKill = append(res.dpKill, s)
	}
	benchInProcessRestart(t, res)

	// New nodes joining: launch, then ADD (retried while the node has no
	// range: mesh-cni answers that it is not ready) and ping host1's pod
	// from the new pod until it answers.
	for i := range restartRounds {
		h := tn.AddHost(t)
		start := time.Now()
		n := launch(t, h, hosts[:1])
		var pod *meshtest.Pod
		err := testnet.Poll(60*time.Second, 20*time.Millisecond, func() error {
			if _, err := os.Stat(h.Path(meshtest.CNIConfPath)); err != nil {
				return err
			}
			if pod == nil {
				p, err := meshtest.AddPod(ctx, t, h, fmt.Sprintf("np%d", i))
				if err != nil {
					return err
				}
				pod = p
				t.Logf("new node %s: pod %s added %v after launch", h.Name, p.IP, time.Since(start))
			}
			// One reply ends it; until then a probe every 20 ms, so that
			// a probe sent before the path existed does not round the
			// figure up to a one-second reply timeout.
			_, err := h.Run(ctx, "ip", "netns", "exec", pod.Name, "ping", "-c", "1", "-i", "0.02", "-w", "2", pods[0].IP.String())
			return err
		})
		took := time.Since(start)
		if err != nil {
			fail("new node %s: %v", h.Name, err)
			return
		}
		t.Logf("new node %s: first reply %v after launch (launched %s); its milestones:\n%s", h.Name, took,
			start.UTC().Format("15:04:05.000"), joinMilestones(n.Proc.Log()))
		t.Logf("host1's lines about %s (and its handshakes, named by key at debug level):\n%s", h.Name, linesSince(a.Proc.Log(), start, h.Name, "andshake"))
		if os.Getenv("BENCH_JOIN_DEBUG") != "" {
			for _, x := range []*node{a, b, n} {
				t.Logf("DEBUG %s ipam/mesh lines since launch:\n%s", x.Host.Name, linesSince(x.Proc.Log(), start, "component=ipam", "component=mesh", "applied data plane"))
			}
		}
		res.joinNew = append(res.joinNew, took)
		if err := n.Proc.Stop(15 * time.Second); err != nil {
			t.Log(err)
		}
	}
	benchBareFirstPacket(t, tn, res)
	benchReach(t, res)
}

// restartRound pings from pods[0] to pods[1] every restartInterval for
// 6 s and runs act after 2 s; act returns the time the restart began
// (a launch, or a kill).
func restartRound(t *testing.T, pods []*meshtest.Pod, act func() (time.Time, error)) (restartSample, error) {
	const count = 300 // 6 s
	pinger := meshtest.StartPing(t, pods[0], pods[1].IP, restartInterval, count)
	time.Sleep(2 * time.Second)
	at, err := act()
	if err != nil {
		return restartSample{}, err
	}
	pr, err := pinger.Wait(time.Minute)
	if err != nil {
		return restartSample{}, err
	}
	return restartSample{lost: pr.Lost(), sent: pr.Sent, gap: pr.LongestGap, first: pr.FirstReplyAfter(at)}, nil
}

func (s restartSample) String() string {
	return fmt.Sprintf("%d of %d probes lost, longest gap %v, first reply %v after the restart began", s.lost, s.sent, s.gap, s.first)
}

// benchInProcessRestart: the comparison for part 7's first rows, on two
// hosts of their own with --dataplane-process=off (wireguard-go in the
// daemon): SIGTERM + launch, restartRounds times.
func benchInProcessRestart(t *testing.T, res *restartResult) {
	fail := func(format string, a ...any) {
		res.inProcessErr = fmt.Sprintf(format, a...)
		t.Error(res.inProcessErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, _, b, pods, err := podPair(ctx, t, "bri", "ip", "--dataplane-process=off")
	if err != nil {
		fail("%v", err)
		return
	}
	for round := range restartRounds {
		s, err := restartRound(t, pods, func() (time.Time, error) { return meshtest.Restart(b.Node, meshtest.RestartSIGTERM, "") })
		if err != nil {
			fail("SIGTERM, wireguard-go in the daemon: %v", err)
			return
		}
		t.Logf("SIGTERM, wireguard-go in the daemon, round %d: %s", round+1, s)
		res.inProcess = append(res.inProcess, s)
	}
}

// benchBareFirstPacket measures what part 7's launch-to-first-reply
// figures compare with: a bare wireguard-go pair configured by hand. On
// two new hosts, wireguard-go runs on the first, configured; each round
// starts wireguard-go on the second, configures it as an operator would
// (UAPI set as `wg set` does, then `ip addr`, `ip link ... up`, one
// command after another) and pings the first's tunnel address every
// 20 ms until it answers: the time from that start to the first reply.
// Then the second is stopped (SIGTERM) for the next round.
func benchBareFirstPacket(t *testing.T, tn *testnet.Net, res *restartResult) {
	fail := func(format string, a ...any) {
		res.bareErr = fmt.Sprintf(format, a...)
		t.Error(res.bareErr)
	}
	h1, h2 := tn.AddHost(t), tn.AddHost(t)
	wgBin := testnet.BuildBinary(t, "golang.zx2c4.com/wireguard")
	k1, k2 := newWGKeyPair(t), newWGKeyPair(t)
	const mtu = 1500 - 80
	p1 := startBareWG(t, h1, wgBin)
	if err := configureBareWG(h1, p1, 1, k1, k2.pub, h2, mtu); err != nil {
		fail("%v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for round := range restartRounds {
		start := time.Now()
		p2 := startBareWG(t, h2, wgBin)
		if err := configureBareWG(h2, p2, 2, k2, k1.pub, h1, mtu); err != nil {
			fail("%v", err)
			return
		}
		configured := time.Since(start)
		err := testnet.Poll(30*time.Second, 20*time.Millisecond, func() error {
			_, err := h2.Run(ctx, "ping", "-c", "1", "-i", "0.02", "-w", "2", bareAddr(1))
			return err
		})
		took := time.Since(start)
		if err != nil {
			fail("bare wireguard-go round %d: %v\n%s", round+1, err, p2.Log())
			return
		}
		t.Logf("bare wireguard-go round %d: configured %v after start, first reply %v after start", round+1, configured, took)
		res.bareFirst = append(res.bareFirst, took)
		if err := p2.Stop(15 * time.Second); err != nil {
			fail("stopping wireguard-go on %s: %v", h2.Name, err)
			return
		}
	}
}

// reachHosts is the size of the mesh whose time to full reachability
// part 7 reports (issue goal: 3 s after the last launch at 20 hosts).
const reachHosts = 20

// benchReach launches reachHosts daemons, each naming only host1, and
// measures from the last launch until host1 has answered a ping from
// every other node's overlay address (the same figure the 30-host test in
// e2e logs).
func benchReach(t *testing.T, res *restartResult) {
	tn := testnet.New(t, testnet.Options{Hosts: reachHosts, Prefix: "brh"})
	hosts := tn.Hosts()
	var nodes []*node
	for i, h := range hosts {
		var peers []*testnet.Host
		if i > 0 {
			peers = hosts[:1]
		}
		nodes = append(nodes, launch(t, h, peers))
	}
	last := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reached := map[string]bool{}
	all := make([]*meshtest.Node, len(nodes))
	for i, n := range nodes {
		all[i] = n.Node
	}
	err := testnet.Poll(90*time.Second, 20*time.Millisecond, func() error {
		return meshtest.ReachAll(ctx, all, reached)
	})
	if err != nil {
		res.reachErr = err.Error()
		t.Errorf("%d-host reachability: %v", reachHosts, err)
		return
	}
	res.reach = time.Since(last)
	t.Logf("%d hosts: host1 reached every overlay address %v after the last launch (%s); the last node's milestones:\n%s",
		reachHosts, res.reach, last.UTC().Format("15:04:05.000"), joinMilestones(nodes[len(nodes)-1].Proc.Log()))
}

func (r *report) printRestart(p func(string, ...any)) {
	p("\n7. Restarts: a pod pings a pod on another host every %v while that host's daemon restarts (userspace data plane)\n", restartInterval)
	res := r.restart
	if res == nil {
		p("   not measured\n")
		return
	}
	if res.err != "" {
		p("   failed: %s\n", firstLine(res.err))
	}
	names := map[meshtest.RestartKind]string{
		meshtest.RestartSIGTERM: "SIGTERM + launch (same binary)",
		meshtest.RestartUpgrade: "SIGTERM + launch of another build",
		meshtest.RestartKill:    "kill -9 + launch",
	}
	p("   %-44s %14s %16s %22s\n", "restart", "lost probes", "ms without", "start to 1st reply")
	row := func(name string, ss []restartSample) {
		if len(ss) == 0 {
			return
		}
		var lost, gaps, firsts []string
		var gapD, firstD []time.Duration
		for _, s := range ss {
			lost = append(lost, fmt.Sprint(s.lost))
			gaps = append(gaps, fmt.Sprint(s.gap.Milliseconds()))
			firsts = append(firsts, fmt.Sprint(s.first.Milliseconds()))
			gapD, firstD = append(gapD, s.gap), append(firstD, s.first)
		}
		p("   %-44s %14s %16s %22s   (per round; median gap %d ms, median first reply %d ms)\n", name,
			strings.Join(lost, ","), strings.Join(gaps, ","), strings.Join(firsts, ","), median(gapD).Milliseconds(), median(firstD).Milliseconds())
	}
	daemonLost := 0
	for _, k := range []meshtest.RestartKind{meshtest.RestartSIGTERM, meshtest.RestartUpgrade, meshtest.RestartKill} {
		row("daemon: "+names[k], res.kinds[k])
		for _, s := range res.kinds[k] {
			daemonLost += s.lost
		}
	}
	row("data-plane process: kill -9 (daemon restarts it)", res.dpKill)
	if res.inProcessErr != "" {
		p("   wireguard-go in the daemon (--dataplane-process=off): failed: %s\n", firstLine(res.inProcessErr))
	}
	row("wireguard-go in the daemon: SIGTERM + launch", res.inProcess)
	if len(res.kinds) > 0 {
		p("   probes lost by all daemon restarts above, data plane in its own process: %d (goal 0: %s)\n", daemonLost, verdict(daemonLost == 0))
	}
	if len(res.joinNew) > 0 {
		var ts []string
		for _, d := range res.joinNew {
			ts = append(ts, fmt.Sprint(d.Milliseconds()))
		}
		m := median(res.joinNew)
		p("   new node joining, launch to its pod's first reply: %s ms (median %d ms; goal 1500 ms: %s)\n", strings.Join(ts, ","), m.Milliseconds(), verdict(m <= 1500*time.Millisecond))
	}
	if ss := res.kinds[meshtest.RestartSIGTERM]; len(ss) > 0 {
		var firstD []time.Duration
		for _, s := range ss {
			firstD = append(firstD, s.first)
		}
		m := median(firstD)
		p("   restart into a running mesh, launch to first reply (median, SIGTERM): %d ms (goal 500 ms: %s)\n", m.Milliseconds(), verdict(m >= 0 && m <= 500*time.Millisecond))
	}
	switch {
	case res.bareErr != "":
		p("   bare wireguard-go pair: failed: %s\n", firstLine(res.bareErr))
	case len(res.bareFirst) > 0:
		var ts []string
		for _, d := range res.bareFirst {
			ts = append(ts, fmt.Sprint(d.Milliseconds()))
		}
		p("   bare wireguard-go pair configured by hand, start of the second to the first reply: %s ms (median %d ms)\n", strings.Join(ts, ","), median(res.bareFirst).Milliseconds())
		r.printFirstPacket(p)
	}
	switch {
	case res.reachErr != "":
		p("   %d-host mesh, last launch to host1 reaching every overlay address: failed: %s\n", reachHosts, firstLine(res.reachErr))
	case res.reach >= 0:
		p("   %d-host mesh, last launch to host1 reaching every overlay address: %d ms (goal 3000 ms: %s)\n", reachHosts, res.reach.Milliseconds(), verdict(res.reach <= 3*time.Second))
	}
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// joinMilestones picks from a new node's log the lines that time its way
// to a first packet: gossip join, the ring, its first range, its gateway
// on the bridge, the CNI config, the WireGuard peers.
func joinMilestones(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		for _, m := range []string{"mesh daemon started", "peer joined", "joined peer", "ring seeded", "chose gateway", "added bridge address", "installed the CNI plugin", "configured WireGuard", "cannot join", "andshake"} {
			if strings.Contains(l, m) {
				out = append(out, strings.TrimSpace(l))
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// linesSince picks from a log the lines that contain any of match and
// were written at or after since.
func linesSince(log string, since time.Time, match ...string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		ok := false
		for _, m := range match {
			ok = ok || strings.Contains(l, m)
		}
		if !ok {
			continue
		}
		if i := strings.Index(l, "time="); i >= 0 && len(l) >= i+5+24 {
			if ts, err := time.Parse(time.RFC3339Nano, l[i+5:i+5+24]); err == nil && ts.Before(since) {
				continue
			}
		}
		out = append(out, strings.TrimSpace(l))
	}
	return strings.Join(out, "\n")
}

// printFirstPacket prints the medians of the first packet after launch
// side by side: mesh restarting into a running mesh (SIGTERM), a new
// mesh node (which must first obtain a range), the bare wireguard-go pair.
func (r *report) printFirstPacket(p func(string, ...any)) {
	res := r.restart
	var restart []time.Duration
	for _, s := range res.kinds[meshtest.RestartSIGTERM] {
		restart = append(restart, s.first)
	}
	bare := median(res.bareFirst)
	row := func(name string, d []time.Duration) {
		if len(d) == 0 {
			p("     %-44s not measured\n", name)
			return
		}
		m := median(d)
		p("     %-44s %6d ms   %5.2f x bare\n", name, m.Milliseconds(), float64(m)/float64(bare))
	}
	p("   first packet after launch, medians side by side:\n")
	row("mesh, restart into a running mesh (SIGTERM)", restart)
	row("mesh, new node joining", res.joinNew)
	row("bare wireguard-go pair, configured by hand", res.bareFirst)
}

// podPair is the setup of the restart rows and of part 11: two hosts of a
// net named netPrefix, launched with flags (host2 naming host1), each with
// a pod (podPrefix0, podPrefix1), the pods reaching each other (over both
// families when flags make the hosts dual-stack).
func podPair(ctx context.Context, t *testing.T, netPrefix, podPrefix string, flags ...string) (*testnet.Net, *node, *node, []*meshtest.Pod, error) {
	tn := testnet.New(t, testnet.Options{Hosts: 2, Prefix: netPrefix})
	hosts := tn.Hosts()
	a := launch(t, hosts[0], nil, flags...)
	b := launch(t, hosts[1], hosts[:1], flags...)
	if err := waitReady([]*node{a, b}, 90*time.Second); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("two-host mesh: %w", err)
	}
	var pods []*meshtest.Pod
	for i, n := range []*node{a, b} {
		meshtest.WaitCNIInstalled(t, n.Node)
		p, err := meshtest.AddPod(ctx, t, n.Host, fmt.Sprintf("%s%d", podPrefix, i))
		if err != nil {
			return nil, nil, nil, nil, err
		}
		pods = append(pods, p)
	}
	for _, dst := range []netip.Addr{pods[1].IP, pods[1].IP6} {
		if !dst.IsValid() {
			continue // no IPv6: not a dual-stack pair
		}
		if err := testnet.Poll(30*time.Second, 250*time.Millisecond, func() error {
			_, err := hosts[0].Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "1", "-W", "1", dst.String())
			return err
		}); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("pods do not reach each other over %s: %w", dst, err)
		}
	}
	return tn, a, b, pods, nil
}
