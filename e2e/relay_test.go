package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/internal/testnet"
)

// relayBlockTable is the nftables table a test adds in a host's namespace
// to cut its WireGuard path to another host.
const relayBlockTable = "relaytest"

// blockDataPlane drops UDP 6784 between h and other, both ways, in h's
// own namespace (gossip on 6783 still flows), over an underlay of either
// family.
func blockDataPlane(ctx context.Context, h, other *testnet.Host) error {
	ip := "ip"
	if other.Addr.Is6() {
		ip = "ip6"
	}
	for _, args := range [][]string{
		{"add", "table", "inet", relayBlockTable},
		{"add", "chain", "inet", relayBlockTable, "in", "{ type filter hook input priority 0; policy accept; }"},
		{"add", "chain", "inet", relayBlockTable, "out", "{ type filter hook output priority 0; policy accept; }"},
		{"add", "rule", "inet", relayBlockTable, "in", ip, "saddr", other.Addr.String(), "udp", "sport", "6784", "drop"},
		{"add", "rule", "inet", relayBlockTable, "out", ip, "daddr", other.Addr.String(), "udp", "dport", "6784", "drop"},
	} {
		if out, err := h.Run(ctx, "nft", args...); err != nil {
			return fmt.Errorf("nft %v on %s: %v: %s", args, h.Name, err, out)
		}
	}
	return nil
}

// cutDataPlane is blockDataPlane between a and b both ways, undone when
// the test ends, also on failure (the namespaces go with the test, but
// the rules must not stay behind for a dump).
func cutDataPlane(ctx context.Context, t *testing.T, a, b *testnet.Host) {
	t.Helper()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.Run(cctx, "nft", "delete", "table", "inet", relayBlockTable)
		b.Run(cctx, "nft", "delete", "table", "inet", relayBlockTable)
	})
	for _, pair := range [][2]*testnet.Host{{a, b}, {b, a}} {
		if err := blockDataPlane(ctx, pair[0], pair[1]); err != nil {
			t.Fatal(err)
		}
	}
}

func unblockDataPlane(ctx context.Context, h *testnet.Host) error {
	if out, err := h.Run(ctx, "nft", "delete", "table", "inet", relayBlockTable); err != nil {
		return fmt.Errorf("nft delete table on %s: %v: %s", h.Name, err, out)
	}
	return nil
}

// connTo is n's connection to the peer named peer.
func connTo(n *node, peer string) (api.Connection, error) {
	st, err := n.Status()
	if err != nil {
		return api.Connection{}, err
	}
	for _, c := range st.Connections {
		if c.Peer == peer {
			return c, nil
		}
	}
	return api.Connection{}, fmt.Errorf("%s has no connection to %s", n.Host.Name, peer)
}

// viaOnBoth says whether a shows b, and b shows a, relayed via relay
// (why is added to the error: "preferred", say).
func viaOnBoth(a, b *node, relay, why string) error {
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		c, err := connTo(pair[0], pair[1].Host.Name)
		if err != nil {
			return err
		}
		if c.Via != relay {
			return fmt.Errorf("%s shows %s via %q, direct path %q; want via %s %s", pair[0].Host.Name, pair[1].Host.Name, c.Via, c.DirectPath, relay, why)
		}
	}
	return nil
}

// relayPods is a mesh of hosts hosts (host i, from 0, launched with
// flags(i); nil: no flags) with pod a on host1 and pod b on host2.
func relayPods(t *testing.T, hosts int, timeout time.Duration, flags func(i int) []string) ([]*node, *pod, *pod, context.Context) {
	t.Helper()
	return relayPodsOn(t, testnet.Options{Hosts: hosts}, timeout, flags)
}

// relayPodsOn is relayPods on a test network of opts (the underlay's
// subnet, say).
func relayPodsOn(t *testing.T, opts testnet.Options, timeout time.Duration, flags func(i int) []string) ([]*node, *pod, *pod, context.Context) {
	t.Helper()
	if flags == nil {
		flags = func(int) []string { return nil }
	}
	_, nodes, ctx := cniMeshOn(t, opts, timeout, flags)
	a, err := addPod(ctx, t, nodes[0].Host, "poda")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addPod(ctx, t, nodes[1].Host, "podb")
	if err != nil {
		t.Fatal(err)
	}
	return nodes, a, b, ctx
}

// pingPod sends one echo request from one pod to another (2 s timeout);
// args go to ping before the address (a TTL, say).
func pingPod(ctx context.Context, from, to *pod, args ...string) error {
	cmd := append(append([]string{"ping", "-c", "1", "-W", "2"}, args...), to.ip.String())
	if out, err := from.exec(ctx, cmd...); err != nil {
		return fmt.Errorf("%s cannot ping %s (%v): %v\n%s", from.name, to.name, args, err, out)
	}
	return nil
}

// pingBoth is pingPod from a to b, then from b to a.
func pingBoth(ctx context.Context, a, b *pod, args ...string) error {
	if err := pingPod(ctx, a, b, args...); err != nil {
		return err
	}
	return pingPod(ctx, b, a, args...)
}

// pingPods is pingPod from every pod of pods to every other, the first
// failure returned.
func pingPods(ctx context.Context, pods []*pod) error {
	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				if err := pingPod(ctx, a, b); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// TestRelayTriangle: three hosts; the data plane between host1 and host2
// is cut both ways. Their pods reach each other again through host3 within
// a generous bound, status on each shows the other "via" host3, host3
// sends no ICMP redirects to them, and once the path is back, traffic
// returns to it.
func TestRelayTriangle(t *testing.T) { relayTriangle(t, triangle{}) }

// TestRelayTriangleIPv6Only is TestRelayTriangle in an IPv6-only mesh:
// the probes are ICMPv6 echoes to the IPv6 overlay addresses, and the
// relayed peer keeps its IPv6 probe address as a /128 (docs/routing.md).
func TestRelayTriangleIPv6Only(t *testing.T) { relayTriangle(t, triangle{v6Mesh: true}) }

// TestRelayTriangleIPv6Underlay is TestRelayTriangle over an IPv6
// underlay (the hosts have no IPv4 address; gossip, WireGuard and the cut
// of UDP 6784 are IPv6), with IPv4 pods.
func TestRelayTriangleIPv6Underlay(t *testing.T) { relayTriangle(t, triangle{v6Underlay: true}) }

// TestRelayTriangleHopByHop is TestRelayTriangle with
// --relay-end-to-end=false: the relay decrypts and routes the pods'
// packets (docs/routing.md, "The mechanism: routing, hop by hop").
func TestRelayTriangleHopByHop(t *testing.T) { relayTriangle(t, triangle{hopByHop: true}) }

// triangle is a variant of TestRelayTriangle.
type triangle struct {
	v6Mesh     bool // IPv6-only cluster range (the pods and probes are IPv6)
	v6Underlay bool // the hosts' underlay is IPv6 alone
	hopByHop   bool // --relay-end-to-end=false on every host
}

// v6Underlay is the IPv6 underlay of TestRelayTriangleIPv6Underlay.
var v6Underlay = netip.MustParsePrefix("fd98::/64")

// relayTriangle is the triangle of TestRelayTriangle, in variant tr.
func relayTriangle(t *testing.T, tr triangle) {
	v6 := tr.v6Mesh
	var args []string
	if v6 {
		args = append(args, "--ipalloc-range", ipv6OnlyRange)
	}
	if tr.hopByHop {
		args = append(args, "--relay-end-to-end=false")
	}
	flags := func(int) []string { return args }
	opts := testnet.Options{Hosts: 3}
	if tr.v6Underlay {
		opts.Subnet = v6Underlay
	}
	nodes, a, b, ctx := relayPodsOn(t, opts, 8*time.Minute, flags)
	h1, h2, h3 := nodes[0].Host, nodes[1].Host, nodes[2].Host
	for _, p := range []*pod{a, b} {
		if p.ip.Is6() != v6 {
			t.Fatalf("pod %s has address %s; want IPv6: %v", p.name, p.ip, v6)
		}
	}
	if tr.v6Underlay {
		for _, c := range nodes[0].MustStatus().Connections {
			if ap, err := netip.ParseAddrPort(c.Endpoint); err != nil || !v6Underlay.Contains(ap.Addr()) {
				t.Fatalf("WireGuard endpoint of %s is %q, want one in %s", c.Peer, c.Endpoint, v6Underlay)
			}
		}
	}
	both := func() error { return pingBoth(ctx, a, b) }
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, both)
	// Probes start once each node has its overlay IP and has heard the
	// other's.
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		for _, pair := range [][2]*node{{nodes[0], nodes[1]}, {nodes[1], nodes[0]}} {
			c, err := connTo(pair[0], pair[1].Host.Name)
			if err != nil {
				return err
			}
			if c.Via != "" || c.DirectPath != api.PathUp {
				return fmt.Errorf("before the cut, %s shows %s via %q, direct path %q", pair[0].Host.Name, pair[1].Host.Name, c.Via, c.DirectPath)
			}
		}
		return nil
	})

	redirects := countRedirects(ctx, t, h3)
	cutDataPlane(ctx, t, h1, h2)
	cut := time.Now()
	viaH3 := func(from, to *node) error {
		c, err := connTo(from, to.Host.Name)
		if err != nil {
			return err
		}
		if c.Via != h3.Name || c.DirectPath != api.PathDown {
			return fmt.Errorf("%s shows %s via %q, direct path %q; want via %s, down", from.Host.Name, to.Host.Name, c.Via, c.DirectPath, h3.Name)
		}
		return nil
	}
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		if err := viaH3(nodes[0], nodes[1]); err != nil {
			return err
		}
		if err := viaH3(nodes[1], nodes[0]); err != nil {
			return err
		}
		return both()
	})
	t.Logf("relayed through %s %v after the cut", h3.Name, time.Since(cut).Round(100*time.Millisecond))
	// The relay keeps working, and the direct path stays cut.
	for range 3 {
		if err := both(); err != nil {
			t.Fatalf("relayed traffic stopped: %v", err)
		}
		time.Sleep(time.Second)
	}
	if err := viaH3(nodes[0], nodes[1]); err != nil {
		t.Fatal(err)
	}
	c, err := connTo(nodes[0], h2.Name)
	if err != nil {
		t.Fatal(err)
	}
	overlay := netip.MustParseAddr(nodes[1].MustStatus().OverlayIP)
	if overlay.Is6() != v6 {
		t.Fatalf("host2's overlay IP %s; want IPv6: %v", overlay, v6)
	}
	c3, err := connTo(nodes[0], h3.Name)
	if err != nil {
		t.Fatal(err)
	}
	owned := nodes[1].MustStatus().IPAM.Owned
	if tr.hopByHop {
		// Only the probe address stays on the direct peer; the relay's
		// peer carries the rest of host2's ranges.
		if probe := netip.PrefixFrom(overlay, overlay.BitLen()).String(); len(c.AllowedIPs) != 1 || c.AllowedIPs[0] != probe {
			t.Fatalf("relayed peer's allowedIPs = %v, want only its probe address %s", c.AllowedIPs, probe)
		}
		for _, r := range owned {
			if !slices.Contains(c3.AllowedIPs, r) {
				t.Fatalf("relay's allowedIPs %v lack host2's range %s", c3.AllowedIPs, r)
			}
		}
		if c.EndToEnd {
			t.Fatalf("%s shows %s end to end with --relay-end-to-end=false", h1.Name, h2.Name)
		}
	} else {
		// End to end: host2's ranges stay on its own peer (and go into
		// the inner device); the relay's peer carries host2's
		// end-to-end address alone, and the relay forwards no packet
		// of the pods in the clear.
		if err := viaEndToEnd(nodes[0], nodes[1]); err != nil {
			t.Fatal(err)
		}
		for _, r := range owned {
			if !slices.Contains(c.AllowedIPs, r) || slices.Contains(c3.AllowedIPs, r) {
				t.Fatalf("host2's range %s: on its own peer %v, on the relay's %v; want on its own only", r, c.AllowedIPs, c3.AllowedIPs)
			}
		}
		plain, inner := countRelayed(ctx, t, h3, a.ip, b.ip)
		for range 5 {
			if err := both(); err != nil {
				t.Fatalf("relayed end to end, traffic stopped: %v", err)
			}
		}
		if p, i := plain(), inner(); p != 0 || i < 10 {
			t.Fatalf("%s forwarded %d packets between the pods in the clear and %d of the inner layer; want none and at least 10", h3.Name, p, i)
		} else {
			t.Logf("%s forwarded %d packets of the inner layer, none of the pods in the clear", h3.Name, i)
		}
	}
	relayMetrics(t, h1, 1)
	// host3 counts what it relays, of either family; the ends relay
	// nothing.
	if got := nodes[2].MustStatus().RelayedBytes; got == 0 {
		t.Fatalf("%s relayed the pods' traffic but counts %d bytes relayed", h3.Name, got)
	}
	for _, n := range nodes[:2] {
		if got := n.MustStatus().RelayedBytes; got != 0 {
			t.Fatalf("%s relayed nothing but counts %d bytes relayed", n.Host.Name, got)
		}
	}
	relayedPerPeer(ctx, t, nodes, a, b)
	// The relay routes, it does not translate: pod b sees pod a's address,
	// over TCP and UDP.
	serveWhoami(t, h2, b.name, ":8080")
	expectSource(t, h1, a.name, netip.AddrPortFrom(b.ip, 8080).String(), "", a.ip)
	if out, err := h1.Run(ctx, "nft", "list", "table", "inet", relayBlockTable); err != nil {
		t.Fatalf("block table gone: %v: %s", err, out)
	}
	// The relay's kernel wanted to send redirects for what it forwarded
	// back into WireGuard, and mesh's output rules dropped them all.
	if sent, left := redirects(); sent == 0 || left != 0 {
		t.Fatalf("%s's kernel sent %d ICMP redirects out of WireGuard and %d left the host; want some sent and none left", h3.Name, sent, left)
	} else {
		t.Logf("%s: %d ICMP redirects sent by the kernel, none left the host", h3.Name, sent)
	}
	for _, n := range nodes {
		if st := n.MustStatus(); len(st.Problems) != 0 {
			t.Fatalf("%s reports problems while relaying: %v", n.Host.Name, st.Problems)
		}
	}

	if err := unblockDataPlane(ctx, h1); err != nil {
		t.Fatal(err)
	}
	if err := unblockDataPlane(ctx, h2); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	testnet.Eventually(t, 90*time.Second, 500*time.Millisecond, func() error {
		for _, pair := range [][2]*node{{nodes[0], nodes[1]}, {nodes[1], nodes[0]}} {
			c, err := connTo(pair[0], pair[1].Host.Name)
			if err != nil {
				return err
			}
			if c.Via != "" || c.DirectPath != api.PathUp {
				return fmt.Errorf("%s shows %s via %q, direct path %q; want direct, up", pair[0].Host.Name, pair[1].Host.Name, c.Via, c.DirectPath)
			}
		}
		return both()
	})
	t.Logf("direct again %v after the path came back", time.Since(healed).Round(100*time.Millisecond))
	relayMetrics(t, h1, 0)
}

// relayedPerPeer checks the relay's bytes per peer in the triangle: echo
// requests that only one end sends (the other pod ignores them, so no
// answer is relayed back) grow the relay's figure for the sender's node
// by at least their size and the other end's by less than one of them,
// in each direction with a different size, so bytes put on one peer or
// swapped between the two fail; each grows the total as much, the peers'
// sum stays within the total, and the ends count nothing for anyone.
func relayedPerPeer(ctx context.Context, t *testing.T, nodes []*node, a, b *pod) {
	t.Helper()
	h1, h2, h3 := nodes[0].Host, nodes[1].Host, nodes[2].Host
	relay := func() (total int64, peers map[string]int64) {
		st := nodes[2].MustStatus()
		peers = map[string]int64{}
		for _, c := range st.Connections {
			peers[c.Peer] = c.RelayedBytes
		}
		return st.RelayedBytes, peers
	}
	ignore := func(p *pod, on bool) {
		key, v := "net.ipv4.icmp_echo_ignore_all", "0"
		if p.ip.Is6() {
			key = "net.ipv6.icmp.echo_ignore_all"
		}
		if on {
			v = "1"
		}
		if out, err := p.exec(ctx, "sysctl", "-qw", key+"="+v); err != nil {
			t.Fatalf("sysctl %s=%s in %s: %v: %s", key, v, p.name, err, out)
		}
	}
	header := 20 + 8
	if a.ip.Is6() {
		header = 40 + 8
	}
	const echoes = 5
	for _, dir := range []struct {
		from, to *pod
		sender   string // the node of from
		other    string
		payload  int
	}{
		{a, b, h1.Name, h2.Name, 1000},
		{b, a, h2.Name, h1.Name, 600},
	} {
		size := int64(dir.payload + header)
		ignore(dir.to, true)
		total0, before := relay()
		// No answer comes: ping fails, and says so.
		dir.from.exec(ctx, "ping", "-c", strconv.Itoa(echoes), "-i", "0.2", "-W", "1", "-s", strconv.Itoa(dir.payload), dir.to.ip.String())
		total1, after := relay()
		ignore(dir.to, false)
		grew, other := after[dir.sender]-before[dir.sender], after[dir.other]-before[dir.other]
		t.Logf("%s: %d echoes of %d bytes from %s: %s +%d, %s +%d, total +%d", h3.Name, echoes, size, dir.sender, dir.sender, grew, dir.other, other, total1-total0)
		if grew < echoes*size || other >= size {
			t.Fatalf("%s counts %s +%d and %s +%d bytes relayed for %d echo requests of %d bytes from %s alone; want at least %d on %s and less than %d on %s",
				h3.Name, dir.sender, grew, dir.other, other, echoes, size, dir.sender, echoes*size, dir.sender, size, dir.other)
		}
		if total1-total0 < grew+other {
			t.Fatalf("%s's total grew by %d, less than its peers' figures (+%d, +%d)", h3.Name, total1-total0, grew, other)
		}
		var sum int64
		for _, v := range after {
			sum += v
		}
		if sum > total1 {
			t.Fatalf("%s's figures per peer %v add up to more than its total %d", h3.Name, after, total1)
		}
	}
	for _, n := range nodes[:2] {
		for _, c := range n.MustStatus().Connections {
			if c.RelayedBytes != 0 {
				t.Fatalf("%s relayed nothing but counts %d bytes relayed for %s", n.Host.Name, c.RelayedBytes, c.Peer)
			}
		}
	}
	code, body, err := httpGet(h3, "http://127.0.0.1:6782/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics on %s = %d, %v", h3.Name, code, err)
	}
	for _, peer := range []string{h1.Name, h2.Name} {
		prefix := fmt.Sprintf("mesh_peer_relayed_bytes_total{peer=%q} ", peer)
		_, rest, ok := strings.Cut(body, prefix)
		v, _, _ := strings.Cut(rest, "\n")
		if n, err := strconv.ParseFloat(v, 64); !ok || err != nil || n <= 0 {
			t.Fatalf("%s's metrics lack a positive %s...: %q", h3.Name, prefix, v)
		}
	}
}

// redirectTable is the nftables table in which a test counts the ICMP
// redirects a relay sends out of WireGuard.
const redirectTable = "redirecttest"

// viaEndToEnd says whether a shows b, and b shows a, relayed end to end.
func viaEndToEnd(a, b *node) error {
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		c, err := connTo(pair[0], pair[1].Host.Name)
		if err != nil {
			return err
		}
		if c.Via == "" || !c.EndToEnd {
			return fmt.Errorf("%s shows %s via %q, end to end %v; want relayed end to end", pair[0].Host.Name, pair[1].Host.Name, c.Via, c.EndToEnd)
		}
	}
	return nil
}

// countRelayed counts on relay h, from now on, the packets it forwards
// between the pod addresses a and b in the clear, and those of the
// end-to-end devices' layer (UDP to their port).
func countRelayed(ctx context.Context, t *testing.T, h *testnet.Host, a, b netip.Addr) (plain, inner func() int64) {
	t.Helper()
	const tb = "relaytest-e2e"
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.Run(cctx, "nft", "delete", "table", "inet", tb)
	})
	ip := "ip"
	if a.Is6() {
		ip = "ip6"
	}
	pods := "{ " + a.String() + ", " + b.String() + " }"
	for _, args := range [][]string{
		{"add", "table", "inet", tb},
		{"add", "counter", "inet", tb, "plain"},
		{"add", "counter", "inet", tb, "inner"},
		{"add", "chain", "inet", tb, "pass", "{ type filter hook forward priority -10; policy accept; }"},
		{"add", "rule", "inet", tb, "pass", ip, "saddr", pods, ip, "daddr", pods, "counter", "name", "plain"},
		{"add", "rule", "inet", tb, "pass", "udp", "dport", strconv.Itoa(fastdp.DefaultInnerListenPort), "counter", "name", "inner"},
	} {
		if out, err := h.Run(ctx, "nft", args...); err != nil {
			t.Fatalf("nft %v on %s: %v: %s", args, h.Name, err, out)
		}
	}
	return func() int64 { return nftCounter(ctx, t, h, "inet", tb, "plain") },
		func() int64 { return nftCounter(ctx, t, h, "inet", tb, "inner") }
}

// countRedirects counts, in h's namespace, the ICMP and ICMPv6 redirects
// the host sends out of mesh's WireGuard device: in an output chain before
// mesh's (priority filter) and in one after it. The function returned
// reads both counts: sent is what the kernel sent, left what passed mesh's
// rules and left the host.
func countRedirects(ctx context.Context, t *testing.T, h *testnet.Host) func() (sent, left int64) {
	t.Helper()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.Run(cctx, "nft", "delete", "table", "inet", redirectTable)
	})
	cmds := [][]string{{"add", "table", "inet", redirectTable}}
	for _, c := range []struct{ name, prio string }{{"sent", "-10"}, {"left", "10"}} {
		cmds = append(cmds,
			[]string{"add", "counter", "inet", redirectTable, c.name},
			[]string{"add", "chain", "inet", redirectTable, c.name, "{ type filter hook output priority " + c.prio + "; policy accept; }"},
			[]string{"add", "rule", "inet", redirectTable, c.name, "oifname", "mesh-wg", "icmp", "type", "redirect", "counter", "name", c.name},
			[]string{"add", "rule", "inet", redirectTable, c.name, "oifname", "mesh-wg", "icmpv6", "type", "nd-redirect", "counter", "name", c.name})
	}
	for _, args := range cmds {
		if out, err := h.Run(ctx, "nft", args...); err != nil {
			t.Fatalf("nft %v on %s: %v: %s", args, h.Name, err, out)
		}
	}
	return func() (int64, int64) {
		t.Helper()
		return nftCounter(ctx, t, h, "inet", redirectTable, "sent"), nftCounter(ctx, t, h, "inet", redirectTable, "left")
	}
}

// nftCounter is the packet count of the named counter name of table
// family tb on h.
func nftCounter(ctx context.Context, t *testing.T, h *testnet.Host, family, tb, name string) int64 {
	t.Helper()
	out, err := h.Run(ctx, "nft", "list", "counter", family, tb, name)
	if err != nil {
		t.Fatalf("nft list counter %s %s %s on %s: %v: %s", family, tb, name, h.Name, err, out)
	}
	_, rest, ok := strings.Cut(out, "packets ")
	f := strings.Fields(rest)
	if !ok || len(f) == 0 {
		t.Fatalf("no packet count in %q", out)
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		t.Fatalf("packet count in %q: %v", out, err)
	}
	return n
}

// relayMetrics checks h's mesh_relayed_peers, and that the relay changes
// were counted.
func relayMetrics(t *testing.T, h *testnet.Host, relayed int) {
	t.Helper()
	code, body, err := httpGet(h, "http://127.0.0.1:6782/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics = %d, %v", code, err)
	}
	if want := fmt.Sprintf("mesh_relayed_peers %d\n", relayed); !strings.Contains(body, want) {
		t.Fatalf("metrics lack %q", want)
	}
	if strings.Contains(body, "mesh_relay_changes_total 0\n") || !strings.Contains(body, "mesh_relay_changes_total ") {
		t.Fatal("the move to the relay was not counted in mesh_relay_changes_total")
	}
}

// TestRelayNoRelay is the control of TestRelayTriangle: with host3
// launched with --no-relay, nothing carries the cut pair's traffic; status
// shows the direct path down and no relay, and the pods stay cut off.
func TestRelayNoRelay(t *testing.T) {
	nodes, a, b, ctx := relayPods(t, 3, 5*time.Minute, func(i int) []string {
		if i == 2 {
			return []string{"--no-relay"}
		}
		return nil
	})
	hosts := []*testnet.Host{nodes[0].Host, nodes[1].Host, nodes[2].Host}
	reach := func() error { return pingPod(ctx, a, b) }
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, reach)
	cutDataPlane(ctx, t, hosts[0], hosts[1])
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		c, err := connTo(nodes[0], hosts[1].Name)
		if err != nil {
			return err
		}
		if c.DirectPath != api.PathDown {
			return fmt.Errorf("direct path %q, want down", c.DirectPath)
		}
		return nil
	})
	// Longer than it took TestRelayTriangle to relay: still no relay.
	time.Sleep(10 * time.Second)
	c, err := connTo(nodes[0], hosts[1].Name)
	if err != nil {
		t.Fatal(err)
	}
	if c.Via != "" {
		t.Fatalf("relayed via %q although the only candidate runs --no-relay", c.Via)
	}
	if err := reach(); err == nil {
		t.Fatal("pods reach each other with the direct path cut and no relay")
	}
}

// relayChanges reads h's mesh_relay_changes_total.
func relayChanges(h *testnet.Host) (string, error) {
	code, body, err := httpGet(h, "http://127.0.0.1:6782/metrics")
	if err != nil || code != 200 {
		return "", fmt.Errorf("GET /metrics on %s = %d, %v", h.Name, code, err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "mesh_relay_changes_total "); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no mesh_relay_changes_total on %s", h.Name)
}

// TestRelayOneWayLoss: WireGuard packets from host1 to host2 are dropped,
// the other direction passes. The probes (an echo needs both ways) see the
// path down at both ends, the pair is relayed through host3, and the route
// does not flap: no relay change on either end over the next 60 s.
func TestRelayOneWayLoss(t *testing.T) {
	nodes, a, b, ctx := relayPods(t, 3, 8*time.Minute, nil)
	h1, h2, h3 := nodes[0].Host, nodes[1].Host, nodes[2].Host
	both := func() error { return pingBoth(ctx, a, b) }
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, both)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h1.Run(cctx, "nft", "delete", "table", "inet", relayBlockTable)
	})
	for _, args := range [][]string{
		{"add", "table", "inet", relayBlockTable},
		{"add", "chain", "inet", relayBlockTable, "out", "{ type filter hook output priority 0; policy accept; }"},
		{"add", "rule", "inet", relayBlockTable, "out", "ip", "daddr", h2.Addr.String(), "udp", "dport", "6784", "drop"},
	} {
		if out, err := h1.Run(ctx, "nft", args...); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		if err := viaOnBoth(nodes[0], nodes[1], h3.Name, "(the only relay)"); err != nil {
			return err
		}
		return both()
	})
	before := map[string]string{}
	for _, h := range []*testnet.Host{h1, h2} {
		v, err := relayChanges(h)
		if err != nil {
			t.Fatal(err)
		}
		before[h.Name] = v
	}
	end := time.Now().Add(60 * time.Second)
	for time.Now().Before(end) {
		if err := both(); err != nil {
			t.Fatalf("relayed traffic stopped: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	for _, h := range []*testnet.Host{h1, h2} {
		v, err := relayChanges(h)
		if err != nil {
			t.Fatal(err)
		}
		if v != before[h.Name] {
			t.Fatalf("%s changed its relayed routes during 60 s of steady one-way loss: mesh_relay_changes_total %s -> %s", h.Name, before[h.Name], v)
		}
	}
}
