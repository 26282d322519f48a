package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestRelayBreaksMidStream: host1 and host4 lose their direct data plane
// and reach each other through one of host2 and host3. While pod a on
// host1 pings pod d on host4 every 50 ms, the chosen relay loses its own
// path to host4. The pair moves to the other relay and the echoes flow
// again; no packet goes around a cycle meanwhile: a counter on every host
// counts the pods' echoes and answers it routes with a TTL below 59, and
// the end-to-end packets that carry them through the relays. The
// longest path without a cycle has four routing hosts (the two ends and
// two relays, when the broken relay still routes through the other for a
// moment), which leaves a TTL of at least 60 for packets sent with 64; a
// packet that went around a cycle would pass below 59 on some host before
// it died.
func TestRelayBreaksMidStream(t *testing.T) {
	nodes, hosts, a, d, ctx := endPods(t, 4, 8*time.Minute)
	for _, pair := range [][2]int{{0, 3}, {3, 0}} {
		if err := blockDataPlane(ctx, hosts[pair[0]], hosts[pair[1]]); err != nil {
			t.Fatal(err)
		}
	}
	// vias are the relays host1 uses towards host4 and host4 towards host1.
	vias := func() (string, string, error) {
		c1, err := connTo(nodes[0], hosts[3].Name)
		if err != nil {
			return "", "", err
		}
		c4, err := connTo(nodes[3], hosts[0].Name)
		return c1.Via, c4.Via, err
	}
	// Both ends agree on one relay.
	var relay, other int
	testnet.Eventually(t, 90*time.Second, 500*time.Millisecond, func() error {
		v1, v4, err := vias()
		if err != nil {
			return err
		}
		if v1 == "" || v1 != v4 {
			return fmt.Errorf("host1 reaches host4 via %q, host4 reaches host1 via %q; want one relay", v1, v4)
		}
		relay, other = 1, 2
		if v1 == hosts[2].Name {
			relay, other = 2, 1
		}
		return pingBoth(ctx, a, d)
	})
	t.Logf("host1 and host4 relayed through %s", hosts[relay].Name)

	for _, h := range hosts {
		addLoopCounters(ctx, t, h, a, d, 59)
	}

	// The stream: 40 s of echoes every 50 ms; the relay breaks 5 s in.
	wait := echoStream(ctx, t, a, d)
	time.Sleep(5 * time.Second)
	for _, pair := range [][2]int{{relay, 3}, {3, relay}} {
		if err := blockDataPlane(ctx, hosts[pair[0]], hosts[pair[1]]); err != nil {
			t.Fatal(err)
		}
	}
	broke := time.Now()
	testnet.Eventually(t, 90*time.Second, 200*time.Millisecond, func() error {
		v1, v4, err := vias()
		if err != nil {
			return err
		}
		if v1 != hosts[other].Name || v4 != hosts[other].Name {
			return fmt.Errorf("host1 reaches host4 via %q, host4 reaches host1 via %q; want %s", v1, v4, hosts[other].Name)
		}
		return nil
	})
	t.Logf("moved to %s %v after the relay's path broke", hosts[other].Name, time.Since(broke).Round(100*time.Millisecond))
	received := wait()

	var routed int64
	for i, h := range hosts {
		if low := nftCounter(ctx, t, h, "ip", loopTable, "low"); low != 0 {
			t.Errorf("%s routed %d of the pods' echoes or answers with a TTL below 59: a cycle", h.Name, low)
		}
		routed += nftCounter(ctx, t, h, "ip", loopTable, "routed")
		// Calibration: the forward hook sees the TTL after this host's
		// own decrement, so a relay, the second routing host, sees 62
		// (64 from the pod, one less on the pod's host, one on the
		// relay's). Had the hook seen it before, the threshold above
		// would be one hop off.
		if second := nftCounter(ctx, t, h, "ip", loopTable, "second"); (i == 1 || i == 2) && second == 0 {
			t.Errorf("%s, a relay of the stream, routed no echo or answer second (TTL 62, or 63 end to end)", h.Name)
		}
	}
	// Each answered echo was routed at least three times on the way and
	// three on the way back (the two ends and a relay): the counters saw
	// the stream.
	if routed < int64(6*received) {
		t.Fatalf("the counters saw %d routed packets for %d answered echoes: they do not count the stream", routed, received)
	}
	if c, err := connTo(nodes[relay], hosts[3].Name); err != nil || c.DirectPath != api.PathDown {
		t.Fatalf("%s's direct path to host4: %+v, %v; want down", hosts[relay].Name, c, err)
	}
}

// endPods starts a mesh of n hosts with a pod on the first (a) and one on
// the last (d) that reach each other, and removes the tables of
// blockDataPlane and addLoopCounters from every host at the end.
func endPods(t *testing.T, n int, timeout time.Duration) (nodes []*node, hosts []*testnet.Host, a, d *pod, ctx context.Context) {
	t.Helper()
	_, nodes, ctx = cniMesh(t, n, timeout)
	for _, nd := range nodes {
		hosts = append(hosts, nd.Host)
	}
	a, err := addPod(ctx, t, hosts[0], "poda")
	if err != nil {
		t.Fatal(err)
	}
	d, err = addPod(ctx, t, hosts[n-1], "podd")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error { return pingBoth(ctx, a, d) })
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, h := range hosts {
			h.Run(cctx, "nft", "delete", "table", "inet", relayBlockTable)
			h.Run(cctx, "nft", "delete", "table", "ip", loopTable)
		}
	})
	return nodes, hosts, a, d, ctx
}

// echoStream starts a stream of 800 echoes from pod a to pod d, every
// 50 ms (40 s), for a path to break under. The function it returns waits
// for the stream's end and fails t unless 3/8 of the echoes were answered
// (generous: the verdict on a broken path and the new routes take a few
// seconds, docs/routing.md; 40 s of echoes leave room for 25) and the
// pair pings again afterwards; it returns how many were answered.
func echoStream(ctx context.Context, t *testing.T, a, d *pod) (wait func() int) {
	const count = 800
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := a.exec(ctx, "ping", "-c", strconv.Itoa(count), "-i", "0.05", "-W", "1", d.ip.String())
		done <- result{out, err}
	}()
	return func() int {
		t.Helper()
		var res result
		select {
		case res = <-done:
		case <-time.After(3 * time.Minute):
			t.Fatal("the ping stream did not end")
		}
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(res.out)
		if m == nil {
			t.Fatalf("ping stream: %v\n%s", res.err, res.out)
		}
		received, _ := strconv.Atoi(m[2])
		if received < count*3/8 {
			t.Fatalf("%d of %d echoes answered across the break", received, count)
		}
		t.Logf("%d of %d echoes (every 50 ms) answered across the break", received, count)
		testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error { return pingBoth(ctx, a, d) })
		return received
	}
}

// loopTable holds the loop counters of TestRelayBreaksMidStream and
// TestRelayChainBreaksMidStream (addLoopCounters).
const loopTable = "relayloop"

// addLoopCounters makes counters on h of the echoes and answers between
// pods a and d that h routes (forward hook, which sees the TTL after h's
// own decrement), and of the end-to-end layer's packets that carry them
// through relays (UDP to fastdp.DefaultInnerListenPort, docs/routing.md):
// "routed", all of them; "low", those with a TTL below below, which a
// packet reaches only by crossing more routing hosts than the longest path
// without a cycle has; "second", those routed by the second routing host
// of a path, the hook's calibration: a pod's packet with TTL 62 (its
// node routed it first) or an end-to-end packet with TTL 63 (its node
// sent it, so a relay routes it first).
func addLoopCounters(ctx context.Context, t *testing.T, h *testnet.Host, a, d *pod, below int) {
	t.Helper()
	match := []string{"ip", "saddr", "{", a.ip.String(), ",", d.ip.String(), "}", "icmp", "type", "{ echo-request, echo-reply }"}
	inner := []string{"udp", "dport", strconv.Itoa(fastdp.DefaultInnerListenPort)}
	rule := func(m []string, extra ...string) []string {
		return append(append([]string{"add", "rule", "ip", loopTable, "counted"}, m...), extra...)
	}
	for _, args := range [][]string{
		{"add", "table", "ip", loopTable},
		{"add", "chain", "ip", loopTable, "counted", "{ type filter hook forward priority 10; policy accept; }"},
		{"add", "counter", "ip", loopTable, "routed"},
		{"add", "counter", "ip", loopTable, "low"},
		{"add", "counter", "ip", loopTable, "second"},
		rule(match, "counter", "name", "routed"),
		rule(match, "ip", "ttl", "lt", strconv.Itoa(below), "counter", "name", "low"),
		rule(match, "ip", "ttl", "62", "counter", "name", "second"),
		rule(inner, "counter", "name", "routed"),
		rule(inner, "ip", "ttl", "lt", strconv.Itoa(below), "counter", "name", "low"),
		rule(inner, "ip", "ttl", "63", "counter", "name", "second"),
	} {
		if out, err := h.Run(ctx, "nft", args...); err != nil {
			t.Fatalf("nft %v on %s: %v: %s", args, h.Name, err, out)
		}
	}
}
