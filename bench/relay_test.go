//go:build bench

package bench

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// relayInterval is the probe interval while the path breaks.
const relayInterval = 50 * time.Millisecond

type relayResult struct {
	tput, rtt     map[string]float64 // "direct", "relayed", "hop by hop": bits/s, ms
	toRelayed     time.Duration      // cut to the first relayed reply
	gap           time.Duration      // longest run of lost probes meanwhile
	toStatus      time.Duration      // cut to status showing "via"
	toDirect      time.Duration      // heal to status showing direct again
	err           string
	relayedSample string
}

var pingAvg = regexp.MustCompile(`= [\d.]+/([\d.]+)/`)

// benchRelay: three hosts with a pod on host1 and on host2. Throughput
// (iperf3, 5 s) and latency (ping) pod to pod, direct; then UDP 6784 is
// dropped between host1 and host2 while host1's pod pings host2's every
// 50 ms: the time from the cut to the first reply through host3, and to
// status showing host2 "via host3"; the same measurements relayed (end to
// end, the default: docs/routing.md); then the rules go and the time to
// direct again. Then, on a second mesh of three whose nodes run
// --relay-end-to-end=false, the relayed throughput and latency hop by hop,
// side by side with the end-to-end figures.
func benchRelay(t *testing.T, r *report) {
	res := &relayResult{tput: map[string]float64{}, rtt: map[string]float64{}}
	r.relay = res
	t.Run("EndToEnd", func(t *testing.T) { benchRelayMesh(t, res, false) })
	t.Run("HopByHop", func(t *testing.T) { benchRelayMesh(t, res, true) })
}

// benchRelayMesh is one mesh of benchRelay: the whole sequence end to end,
// or, hop by hop, the relayed measurements alone.
func benchRelayMesh(t *testing.T, res *relayResult, hopByHop bool) {
	fail := func(format string, a ...any) {
		res.err = fmt.Sprintf(format, a...)
		t.Error(res.err)
	}
	prefix, extra := "brl", []string(nil)
	if hopByHop {
		prefix, extra = "brh", []string{"--relay-end-to-end=false"}
	}
	tn := testnet.New(t, testnet.Options{Hosts: 3, Prefix: prefix})
	hosts := tn.Hosts()
	nodes := []*node{launch(t, hosts[0], nil, extra...), launch(t, hosts[1], hosts[:1], extra...), launch(t, hosts[2], hosts[:1], extra...)}
	if err := waitReady(nodes, 90*time.Second); err != nil {
		fail("three-host mesh: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var pods []*meshtest.Pod
	for i, n := range nodes[:2] {
		meshtest.WaitCNIInstalled(t, n.Node)
		p, err := meshtest.AddPod(ctx, t, n.Host, fmt.Sprintf("rl%d", i))
		if err != nil {
			fail("%v", err)
			return
		}
		pods = append(pods, p)
	}
	hosts[1].Start(t, "ip", []string{"netns", "exec", pods[1].Name, "iperf3", "-s"}, nil)
	path := func(want string) error {
		st, err := nodes[0].Status()
		if err != nil {
			return err
		}
		for _, c := range st.Connections {
			if c.Peer == hosts[1].Name {
				if c.Via != want || (want == "") != (c.DirectPath == api.PathUp) || c.EndToEnd != (want != "" && !hopByHop) {
					return fmt.Errorf("host2 via %q, direct path %q, end to end %v", c.Via, c.DirectPath, c.EndToEnd)
				}
				return nil
			}
		}
		return fmt.Errorf("no connection to host2")
	}
	measure := func(name string) bool {
		out, err := hosts[0].Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "20", "-i", "0.05", "-q", pods[1].IP.String())
		m := pingAvg.FindStringSubmatch(out)
		if err != nil || m == nil {
			fail("%s ping: %v: %s", name, err, out)
			return false
		}
		res.rtt[name], _ = strconv.ParseFloat(m[1], 64)
		bps, err := iperfIn(hosts[0], pods[0].Name, pods[1].IP.String(), 5)
		if err != nil {
			fail("%s iperf3: %v", name, err)
			return false
		}
		res.tput[name] = bps
		return true
	}
	if err := testnet.Poll(30*time.Second, 250*time.Millisecond, func() error { return path("") }); err != nil {
		fail("before the cut: %v", err)
		return
	}
	if !hopByHop && !measure("direct") {
		return
	}

	const count = 600 // 30 s
	var pinger *meshtest.Pinger
	if !hopByHop {
		pinger = meshtest.StartPing(t, pods[0], pods[1].IP, relayInterval, count)
		time.Sleep(2 * time.Second)
	}
	nft := func(h *testnet.Host, args ...string) error {
		if out, err := h.Run(ctx, "nft", args...); err != nil {
			return fmt.Errorf("nft %v on %s: %v: %s", args, h.Name, err, out)
		}
		return nil
	}
	for _, pair := range [][2]*testnet.Host{{hosts[0], hosts[1]}, {hosts[1], hosts[0]}} {
		h, other := pair[0], pair[1].Addr.String()
		for _, args := range [][]string{
			{"add", "table", "inet", "benchrelay"},
			{"add", "chain", "inet", "benchrelay", "in", "{ type filter hook input priority 0; policy accept; }"},
			{"add", "chain", "inet", "benchrelay", "out", "{ type filter hook output priority 0; policy accept; }"},
			{"add", "rule", "inet", "benchrelay", "in", "ip", "saddr", other, "udp", "sport", "6784", "drop"},
			{"add", "rule", "inet", "benchrelay", "out", "ip", "daddr", other, "udp", "dport", "6784", "drop"},
		} {
			if err := nft(h, args...); err != nil {
				fail("%v", err)
				return
			}
		}
	}
	// The cut is complete once both hosts' rules are in: a reply that
	// crossed before that was no relayed one.
	cut := time.Now()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hosts[0].Run(cctx, "nft", "delete", "table", "inet", "benchrelay")
		hosts[1].Run(cctx, "nft", "delete", "table", "inet", "benchrelay")
	})
	if err := testnet.Poll(60*time.Second, 100*time.Millisecond, func() error { return path(hosts[2].Name) }); err != nil {
		fail("relay: %v", err)
		return
	}
	if hopByHop {
		measure("hop by hop")
		return
	}
	res.toStatus = time.Since(cut)
	pr, err := pinger.Wait(time.Minute)
	if err != nil {
		fail("ping through the cut: %v", err)
		return
	}
	// A reply within a few milliseconds of the cut was on its way already.
	res.toRelayed, res.gap, res.relayedSample = pr.FirstReplyAfter(cut.Add(10*time.Millisecond)), pr.LongestGap, pr.String()
	if !measure("relayed") {
		return
	}
	heal := time.Now()
	for _, h := range hosts[:2] {
		if err := nft(h, "delete", "table", "inet", "benchrelay"); err != nil {
			fail("%v", err)
			return
		}
	}
	if err := testnet.Poll(2*time.Minute, 100*time.Millisecond, func() error { return path("") }); err != nil {
		fail("direct again: %v", err)
		return
	}
	res.toDirect = time.Since(heal)
}

func (res *relayResult) print(p func(string, ...any)) {
	p("\n9. Route-around: pod to pod across a third host when UDP 6784 is cut between two (userspace data plane)\n")
	if res == nil {
		p("   not measured\n")
		return
	}
	if res.err != "" {
		p("   failed: %s\n", firstLine(res.err))
	}
	p("   %-34s %14s %14s\n", "", "iperf3", "ping avg")
	for _, m := range []struct{ name, label string }{
		{"direct", "direct"}, {"relayed", "relayed end to end (default)"}, {"hop by hop", "relayed hop by hop"},
	} {
		if bps, ok := res.tput[m.name]; ok {
			ratio := ""
			if d := res.tput["direct"]; d > 0 && m.name != "direct" {
				ratio = fmt.Sprintf("   %.2fx direct", bps/d)
			}
			p("   %-34s %9.2f Gbit/s %11.3f ms%s\n", m.label, bps/1e9, res.rtt[m.name], ratio)
		}
	}
	if res.toStatus > 0 {
		p("   cut to the first relayed reply     %v (probes every %v; longest gap %v; %s)\n", res.toRelayed.Round(time.Millisecond), relayInterval, res.gap, res.relayedSample)
		p("   cut to status \"via host3\"           %v (goal 10 s: %s)\n", res.toStatus.Round(100*time.Millisecond), verdict(res.toStatus <= 10*time.Second))
	}
	if res.toDirect > 0 {
		p("   path back to status direct again   %v (goal 30 s: %s)\n", res.toDirect.Round(100*time.Millisecond), verdict(res.toDirect <= 30*time.Second))
	}
}
