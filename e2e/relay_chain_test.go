package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestRelayChain: four hosts whose data plane reaches only the next one in
// a chain (UDP 6784 passes between host1-host2, host2-host3 and
// host3-host4, and is dropped between every other pair, both ways; gossip
// still reaches everyone). Pods on host1 and host4 reach each other through
// host2 and host3, each node routing to its own next hop. No loop: each
// host that routes a packet decrements its TTL and drops it when the TTL
// would reach 0, so an echo sent with TTL k+1 crosses at most k routing
// hosts. With TTL 5 the echoes pass both ways (the four hosts, each
// once); with TTL 4 they do not (the check counts the relays). A packet
// that went around a loop would cross more hosts and be dropped. And a
// counter of the test's own on every host counts each echo and answer
// forwarded from WireGuard back into WireGuard: exactly once on host2 and
// host3, never on the ends; mesh's own counter of what a node routes for
// others (mesh_relayed_bytes_total, status relayedBytes) grows by at least
// their bytes on the relays and not at all on the ends, and its figures
// per peer count the echoes for host1 and the answers for host4 on both
// relays. No ICMP redirect
// from one relay crosses the other. That is the chain hop by hop
// (--relay-end-to-end=false), where the relays route the pods' packets.
func TestRelayChain(t *testing.T) { relayChain(t, true) }

// TestRelayChainEndToEnd is TestRelayChain as it runs by default: host1
// and host4 talk end to end through the chain (docs/routing.md), so the
// relays route only the end-to-end layer's packets between them. The
// pods' echoes then cross two routing hosts, the ends (TTL 3 passes, 2
// does not: the relays are inside the tunnel, and no loop of the outer
// layer could lengthen the pods' path), no relay forwards an echo or
// answer of the pods, each forwards at least one end-to-end packet for
// each, and the relayed bytes, in all and per peer, count them as
// before.
func TestRelayChainEndToEnd(t *testing.T) { relayChain(t, false) }

func relayChain(t *testing.T, hopByHop bool) {
	var extra []string
	if hopByHop {
		extra = append(extra, "--relay-end-to-end=false")
	}
	_, nodes, ctx := cniMesh(t, 4, 8*time.Minute, extra...)
	hosts := []*testnet.Host{nodes[0].Host, nodes[1].Host, nodes[2].Host, nodes[3].Host}
	a, err := addPod(ctx, t, hosts[0], "poda")
	if err != nil {
		t.Fatal(err)
	}
	d, err := addPod(ctx, t, hosts[3], "podd")
	if err != nil {
		t.Fatal(err)
	}
	ping := func(from, to *pod, ttl int) error { return pingPod(ctx, from, to, "-t", strconv.Itoa(ttl)) }
	both := func(ttl int) error { return pingBoth(ctx, a, d, "-t", strconv.Itoa(ttl)) }
	// Direct, the routers are the two ends' hosts: TTL 3 passes, 2 does
	// not. This calibrates the TTL check below.
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error { return both(3) })
	if err := ping(a, d, 2); err == nil {
		t.Fatal("an echo with TTL 2 crossed two routing hosts")
	}
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		for _, n := range nodes {
			for _, o := range nodes {
				if n == o {
					continue
				}
				c, err := connTo(n, o.Host.Name)
				if err != nil {
					return err
				}
				if c.DirectPath != api.PathUp {
					return fmt.Errorf("before the cut, %s shows %s direct path %q", n.Host.Name, o.Host.Name, c.DirectPath)
				}
			}
		}
		return nil
	})

	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, h := range hosts {
			h.Run(cctx, "nft", "delete", "table", "inet", relayBlockTable)
		}
	})
	// Only neighbours in the chain keep their data plane.
	for i := range hosts {
		for j := range hosts {
			if i == j || i-j == 1 || j-i == 1 {
				continue
			}
			if err := blockDataPlane(ctx, hosts[i], hosts[j]); err != nil {
				t.Fatal(err)
			}
		}
	}
	cut := time.Now()
	// Every node's next hop towards each far peer, from its own position.
	want := []struct{ from, to, via int }{
		{0, 2, 1}, {0, 3, 1}, {1, 3, 2}, {2, 0, 1}, {3, 0, 2}, {3, 1, 2},
	}
	routed := func() error {
		for _, w := range want {
			c, err := connTo(nodes[w.from], hosts[w.to].Name)
			if err != nil {
				return err
			}
			if c.Via != hosts[w.via].Name || c.DirectPath != api.PathDown {
				return fmt.Errorf("%s shows %s via %q, direct path %q; want via %s, down",
					hosts[w.from].Name, hosts[w.to].Name, c.Via, c.DirectPath, hosts[w.via].Name)
			}
		}
		for _, pair := range [][2]int{{0, 1}, {1, 2}, {2, 3}} {
			c, err := connTo(nodes[pair[0]], hosts[pair[1]].Name)
			if err != nil {
				return err
			}
			if c.Via != "" || c.DirectPath != api.PathUp {
				return fmt.Errorf("%s shows its chain neighbour %s via %q, direct path %q; want direct, up",
					hosts[pair[0]].Name, hosts[pair[1]].Name, c.Via, c.DirectPath)
			}
		}
		return nil
	}
	testnet.Eventually(t, 90*time.Second, 500*time.Millisecond, func() error {
		if err := routed(); err != nil {
			return err
		}
		return both(64)
	})
	t.Logf("routed along the chain %v after the cut", time.Since(cut).Round(100*time.Millisecond))

	// Four routing hosts: TTL 5 passes, 4 does not, both ways, and that
	// holds for every echo of a stream. End to end, the ends alone
	// route the pods' packets: 3 and 2.
	pass := 5
	if !hopByHop {
		pass = 3
		for _, pair := range [][2]int{{0, 3}, {3, 0}} {
			if c, err := connTo(nodes[pair[0]], hosts[pair[1]].Name); err != nil || !c.EndToEnd {
				t.Fatalf("%s shows %s %+v, %v; want relayed end to end", hosts[pair[0]].Name, hosts[pair[1]].Name, c, err)
			}
		}
	}
	for i := range 10 {
		if err := both(pass); err != nil {
			t.Fatalf("echo %d along the chain with TTL %d: %v", i, pass, err)
		}
	}
	if err := ping(a, d, pass-1); err == nil {
		t.Fatalf("an echo with TTL %d crossed %d routing hosts: the TTL check does not count them", pass-1, pass-1)
	}
	if err := ping(d, a, pass-1); err == nil {
		t.Fatalf("an echo with TTL %d crossed %d routing hosts back: the TTL check does not count them", pass-1, pass-1)
	}
	if err := routed(); err != nil {
		t.Fatal(err)
	}

	// Ten echoes of 1000 bytes of payload (IP packets of 1028 bytes) and
	// their ten answers.
	const echoTable = "relaychaintest"
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, h := range hosts {
			h.Run(cctx, "nft", "delete", "table", "ip", echoTable)
		}
	})
	for _, h := range hosts {
		for _, args := range [][]string{
			{"add", "table", "ip", echoTable},
			{"add", "chain", "ip", echoTable, "counted", "{ type filter hook forward priority 10; policy accept; }"},
			{"add", "counter", "ip", echoTable, "echo"},
			{"add", "counter", "ip", echoTable, "redirects"},
			{"add", "counter", "ip", echoTable, "inner"},
			{"add", "rule", "ip", echoTable, "counted", "iifname", "mesh-wg", "oifname", "mesh-wg", "icmp", "type", "{ echo-request, echo-reply }", "ip", "length", "1028", "counter", "name", "echo"},
			{"add", "rule", "ip", echoTable, "counted", "iifname", "mesh-wg", "oifname", "mesh-wg", "icmp", "type", "redirect", "counter", "name", "redirects"},
			{"add", "rule", "ip", echoTable, "counted", "iifname", "mesh-wg", "oifname", "mesh-wg", "udp", "dport", strconv.Itoa(fastdp.DefaultInnerListenPort), "counter", "name", "inner"},
		} {
			if out, err := h.Run(ctx, "nft", args...); err != nil {
				t.Fatalf("nft %v on %s: %v: %s", args, h.Name, err, out)
			}
		}
	}
	echoes := func(h *testnet.Host, name string) int64 { return nftCounter(ctx, t, h, "ip", echoTable, name) }
	// perPeer: each node's figure per peer (the source's node).
	perPeer := make([][2]map[string]int64, len(nodes))
	relayedBytes := func(i int) []int64 {
		var out []int64
		for j, n := range nodes {
			st := n.MustStatus()
			out = append(out, st.RelayedBytes)
			perPeer[j][i] = map[string]int64{}
			for _, c := range st.Connections {
				perPeer[j][i][c.Peer] = c.RelayedBytes
			}
		}
		return out
	}
	before := relayedBytes(0)
	out, err := a.exec(ctx, "ping", "-c", "10", "-i", "0.2", "-W", "2", "-s", "1000", d.ip.String())
	if err != nil || !strings.Contains(out, "10 packets transmitted, 10 received") {
		t.Fatalf("ten echoes along the chain: %v\n%s", err, out)
	}
	after := relayedBytes(1)
	for i, h := range hosts {
		relay := i == 1 || i == 2
		want := int64(0)
		if relay && hopByHop {
			want = 20
		}
		if got := echoes(h, "echo"); got != want {
			t.Errorf("%s forwarded %d echoes and answers from WireGuard back into it, want %d", h.Name, got, want)
		}
		if got := echoes(h, "inner"); !hopByHop && relay && got < 20 || (hopByHop || !relay) && got != 0 {
			t.Errorf("%s forwarded %d end-to-end packets from WireGuard back into it during ten echoes and answers (end to end: %v)", h.Name, got, !hopByHop)
		}
		got := after[i] - before[i]
		if relay && got < 20*1028 || !relay && got != 0 {
			t.Errorf("%s's relayedBytes grew by %d during ten echoes of 1028 bytes and their answers (before %d, after %d)", h.Name, got, before[i], after[i])
		}
		// A relay's redirects towards a source would cross the relay
		// before it; mesh drops them where they are sent.
		if r := echoes(h, "redirects"); r != 0 {
			t.Errorf("%s forwarded %d ICMP redirects from WireGuard back into it, want 0", h.Name, r)
		}
		t.Logf("%s: relayedBytes +%d", h.Name, got)
		// Per peer, by the packet's source, not the hop it came
		// from: the echoes count for host1 and their answers for
		// host4 on both relays, although host2 gets the answers
		// from host3 and host3 the echoes from host2.
		for _, src := range []string{hosts[0].Name, hosts[3].Name} {
			g := perPeer[i][1][src] - perPeer[i][0][src]
			if relay && g < 10*1028 || !relay && g != 0 {
				t.Errorf("%s's relayedBytes for %s grew by %d during ten echoes of 1028 bytes and their answers", h.Name, src, g)
			}
		}
	}
	code, body, err := httpGet(hosts[1], "http://127.0.0.1:6782/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics on %s = %d, %v", hosts[1].Name, code, err)
	}
	if !strings.Contains(body, "mesh_relayed_bytes_total ") || strings.Contains(body, "mesh_relayed_bytes_total 0\n") {
		t.Fatalf("%s's metrics lack a non-zero mesh_relayed_bytes_total", hosts[1].Name)
	}
	for _, n := range nodes {
		if st := n.MustStatus(); len(st.Problems) != 0 {
			t.Fatalf("%s reports problems while relaying: %v", n.Host.Name, st.Problems)
		}
	}
}

// TestRelayPreference: host1 and host2 lose their direct path; host3 and
// host4 both reach both, and host4 runs --relay-preference 10. Both ends
// relay through host4, although host3's name is smaller: the preference
// travels in the path report and decides before the name.
func TestRelayPreference(t *testing.T) {
	nodes, a, b, ctx := relayPods(t, 4, 5*time.Minute, func(i int) []string {
		if i == 3 {
			return []string{"--relay-preference", "10"}
		}
		return nil
	})
	hosts := []*testnet.Host{nodes[0].Host, nodes[1].Host, nodes[2].Host, nodes[3].Host}
	both := func() error { return pingBoth(ctx, a, b) }
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, both)
	cutDataPlane(ctx, t, hosts[0], hosts[1])
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		if err := viaOnBoth(nodes[0], nodes[1], hosts[3].Name, "(preferred)"); err != nil {
			return err
		}
		return both()
	})
	// host4 carries the pair, host3 nothing.
	before := nodes[2].MustStatus().RelayedBytes
	for range 3 {
		if err := both(); err != nil {
			t.Fatalf("relayed traffic stopped: %v", err)
		}
	}
	if got := nodes[3].MustStatus().RelayedBytes; got == 0 {
		t.Fatalf("%s, the preferred relay, routed nothing for others", hosts[3].Name)
	}
	if got := nodes[2].MustStatus().RelayedBytes; got != before {
		t.Fatalf("%s routed %d bytes for others while %s relays", hosts[2].Name, got-before, hosts[3].Name)
	}
}
