package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// startMesh launches n hosts that all name the first one, and waits until
// every node owns a range, sees every other node alive and has an
// established data-plane connection to each.
func startMesh(t *testing.T, hosts int, extra ...string) (*testnet.Net, []*node) {
	t.Helper()
	return startMeshFlags(t, hosts, func(int) []string { return extra })
}

// startMeshFlags is startMesh where host i (from 0) is launched with
// flags(i).
func startMeshFlags(t *testing.T, hosts int, flags func(i int) []string) (*testnet.Net, []*node) {
	t.Helper()
	return startMeshOn(t, testnet.Options{Hosts: hosts}, flags)
}

// startMeshOn is startMeshFlags on a test network of opts (the underlay's
// subnet, say); its prefix defaults to "dp".
func startMeshOn(t *testing.T, opts testnet.Options, flags func(i int) []string) (*testnet.Net, []*node) {
	t.Helper()
	return startMeshSetup(t, opts, nil, flags)
}

// startMeshSetup is startMeshOn with setup (when not nil) run on the test
// network before any daemon starts (to delay a host's link, say).
func startMeshSetup(t *testing.T, opts testnet.Options, setup func(*testnet.Net), flags func(i int) []string) (*testnet.Net, []*node) {
	t.Helper()
	testnet.RequireRoot(t)
	if opts.Prefix == "" {
		opts.Prefix = "dp"
	}
	net := testnet.New(t, opts)
	if setup != nil {
		setup(net)
	}
	var nodes []*node
	for i, h := range net.Hosts() {
		var peers []*testnet.Host
		if i > 0 {
			peers = net.Hosts()[:1]
		}
		nodes = append(nodes, launch(t, h, peers, flags(i)...))
	}
	dumpLogsOnFailure(t, nodes...)
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)
	waitConnected(t, nodes)
	return net, nodes
}

func waitConnected(t *testing.T, nodes []*node) {
	t.Helper()
	testnet.Eventually(t, 90*time.Second, 500*time.Millisecond, func() error { return meshtest.Ready(nodes) })
}

func overlayIPs(t *testing.T, nodes []*node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.MustStatus().OverlayIP)
	}
	return out
}

// pingAll pings every other node's overlay IP from every node.
func pingAll(t *testing.T, nodes []*node) error {
	ips := overlayIPs(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, n := range nodes {
		for j, ip := range ips {
			if i == j {
				continue
			}
			if out, err := n.Host.Run(ctx, "ping", "-c", "2", "-W", "2", "-i", "0.2", ip); err != nil {
				return fmt.Errorf("%s cannot ping %s (%s): %v\n%s", n.Host.Name, nodes[j].Host.Name, ip, err, out)
			}
		}
	}
	return nil
}

func TestOverlayPingIsEncrypted(t *testing.T) {
	_, nodes := startMesh(t, 3)
	st := nodes[0].MustStatus()
	if st.Dataplane != "userspace" {
		t.Fatalf("dataplane = %q, want userspace (auto on a host without the kernel module)", st.Dataplane)
	}
	if st.MTU != 1500-80 {
		t.Fatalf("mtu = %d, want %d", st.MTU, 1500-80)
	}
	// Ranges are disjoint and cover only the cluster range.
	owned := map[string]string{}
	for _, n := range nodes {
		for _, c := range n.MustStatus().IPAM.Owned {
			p := netip.MustParsePrefix(c)
			if !netip.MustParsePrefix("10.32.0.0/12").Contains(p.Addr()) {
				t.Fatalf("%s owns %s outside the cluster range", n.Host.Name, c)
			}
			for other, by := range owned {
				if netip.MustParsePrefix(other).Overlaps(p) {
					t.Fatalf("%s and %s both own %s/%s", by, n.Host.Name, other, c)
				}
			}
			owned[c] = n.Host.Name
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	capFile := "/var/lib/mesh/underlay.pcap"
	dump := nodes[0].Host.Start(t, "tcpdump", []string{"-i", "eth0", "-nn", "-U", "-w", capFile}, nil)
	time.Sleep(time.Second) // tcpdump attaches
	if err := pingAll(t, nodes); err != nil {
		t.Fatal(err)
	}
	if err := dump.Stop(5 * time.Second); err != nil {
		t.Logf("stopping tcpdump: %v", err)
	}
	icmp, err := nodes[0].Host.Run(ctx, "tcpdump", "-r", capFile, "-nn", "icmp")
	if err != nil {
		t.Fatalf("reading capture: %v\n%s", err, icmp)
	}
	if strings.Contains(icmp, "ICMP") {
		t.Fatalf("plaintext ICMP on the underlay:\n%s", icmp)
	}
	wg, err := nodes[0].Host.Run(ctx, "tcpdump", "-r", capFile, "-nn", "udp port 6784")
	// tcpdump decodes port 6784 as BFD; count packets, not protocol names.
	if err != nil || len(nonEmptyLines(wg)) < 8 {
		t.Fatalf("expected WireGuard packets on UDP 6784, got %v:\n%s\ntcpdump log:\n%s", err, wg, dump.Log())
	}
	other, _ := nodes[0].Host.Run(ctx, "tcpdump", "-r", capFile, "-nn", "not udp port 6784 and not port 6783 and not arp and not ip6")
	if lines := nonEmptyLines(other); len(lines) > 0 {
		t.Fatalf("unexpected traffic on the underlay:\n%s", other)
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" && !strings.HasPrefix(l, "reading from file") {
			out = append(out, l)
		}
	}
	return out
}

// The debug lines of ipam/delta.go: a ring change announced by a delta,
// and learnt from one.
const (
	deltaSentLog   = "announced a ring change by a delta"
	deltaMergedLog = "learnt a ring change from a delta"
)

func TestRangesMoveAllowedIPsFollow(t *testing.T) {
	_, nodes := startMesh(t, 3)
	// The dead node's space goes to its heirs, the owners of the
	// addresses below its runs (docs/ipam.md, "mesh rmpeer NAME"): the
	// node that dies is the one whose run follows the first node's, so
	// that some of its space goes to the first node, whose AllowedIPs on
	// the third (observer) must then follow.
	gone, observer := followerOf(t, nodes)
	goneRanges := gone.MustStatus().IPAM.Owned
	// Every member reads deltas: the removal below is announced by one.
	for _, n := range nodes {
		if ip := n.MustStatus().IPAM; ip == nil || !ip.Deltas {
			t.Fatalf("%s announces ring changes by whole states though every member reads deltas: %+v", n.Host.Name, ip)
		}
	}
	if err := gone.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	expectStates(t, detectTimeout, []*node{nodes[0], observer}, map[string]string{gone.Host.Name: "dead"}, false)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// rmpeer waits until the dead peer's last changes have spread.
	out, err := nodes[0].Host.Run(ctx, nodes[0].Bin, "rmpeer", gone.Host.Name)
	if err == nil || !strings.Contains(out, "try again in") {
		t.Fatalf("rmpeer right after the death: err=%v\n%s", err, out)
	}
	testnet.Eventually(t, 90*time.Second, 2*time.Second, func() error {
		_, err := nodes[0].Host.Run(ctx, nodes[0].Bin, "rmpeer", gone.Host.Name)
		return err
	})
	// The removal went out as a delta, and the other live node merged
	// it (not only a push/pull's whole state).
	testnet.Eventually(t, 20*time.Second, 250*time.Millisecond, func() error {
		if !strings.Contains(nodes[0].Proc.Log(), deltaSentLog) {
			return fmt.Errorf("%s logged no %q", nodes[0].Host.Name, deltaSentLog)
		}
		if !strings.Contains(observer.Proc.Log(), deltaMergedLog) {
			return fmt.Errorf("%s logged no %q", observer.Host.Name, deltaMergedLog)
		}
		return nil
	})
	// On the observer, the AllowedIPs of the first node now cover the
	// part of the dead node's ranges it inherited, and the observer owns
	// the rest: a few gossip messages, no restart.
	testnet.Eventually(t, 20*time.Second, 250*time.Millisecond, func() error {
		st, err := observer.Status()
		if err != nil {
			return err
		}
		var inherited []string
		for _, q := range st.IPAM.Ranges {
			qp := netip.MustParsePrefix(q.CIDR)
			for _, r := range goneRanges {
				if !meshtest.Covers([]string{r}, qp) {
					continue
				}
				switch q.Owner {
				case nodes[0].Host.Name:
					inherited = append(inherited, q.CIDR)
				case observer.Host.Name:
				default:
					return fmt.Errorf("%s of the dead node's %s is owned by %q", q.CIDR, r, q.Owner)
				}
			}
		}
		if len(inherited) == 0 {
			return fmt.Errorf("%s inherited none of %v: %v", nodes[0].Host.Name, goneRanges, st.IPAM.Ranges)
		}
		var conn *api.Connection
		for i := range st.Connections {
			if st.Connections[i].Peer == nodes[0].Host.Name {
				conn = &st.Connections[i]
			}
		}
		if conn == nil {
			return fmt.Errorf("no connection to %s: %+v", nodes[0].Host.Name, st.Connections)
		}
		for _, r := range inherited {
			if !meshtest.Covers(conn.AllowedIPs, netip.MustParsePrefix(r)) {
				return fmt.Errorf("%s not in AllowedIPs %v of %s", r, conn.AllowedIPs, nodes[0].Host.Name)
			}
		}
		for _, c := range st.Connections {
			if c.Peer == gone.Host.Name {
				return fmt.Errorf("the dead node still has a data-plane peer")
			}
		}
		return nil
	})
	// Refused while alive.
	out, err = nodes[0].Host.Run(ctx, nodes[0].Bin, "rmpeer", observer.Host.Name)
	if err == nil || !strings.Contains(out, "alive") {
		t.Fatalf("rmpeer of a live peer: err=%v\n%s", err, out)
	}
}

// followerOf returns the node (of nodes[1:]) that owns the run of the
// ring right after the first run of nodes[0], and the other one.
func followerOf(t *testing.T, nodes []*node) (follower, other *node) {
	t.Helper()
	ranges := nodes[0].MustStatus().IPAM.Ranges
	slices.SortFunc(ranges, func(x, y api.RangeInfo) int {
		return netip.MustParsePrefix(x.CIDR).Addr().Compare(netip.MustParsePrefix(y.CIDR).Addr())
	})
	for i, r := range ranges {
		if r.Owner != nodes[0].Host.Name {
			continue
		}
		for j := 1; j < len(ranges); j++ {
			next := ranges[(i+j)%len(ranges)].Owner
			if next == nodes[0].Host.Name {
				continue
			}
			for k, n := range nodes[1:] {
				if n.Host.Name == next {
					return n, nodes[2-k]
				}
			}
		}
	}
	t.Fatalf("no run of another node follows one of %s: %v", nodes[0].Host.Name, ranges)
	return nil, nil
}

func TestKillRestartDataplane(t *testing.T) {
	_, nodes := startMesh(t, 2)
	victim := nodes[1]
	if err := victim.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	victim.Start()
	waitConnected(t, nodes)
	testnet.Eventually(t, 30*time.Second, time.Second, func() error { return pingAll(t, nodes) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	links, err := victim.Host.Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(links, "mesh-wg"); n != 1 {
		t.Fatalf("%d mesh-wg links after restart:\n%s", n, links)
	}
	routes, err := victim.Host.Run(ctx, "ip", "route", "show", "proto", "109")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, l := range nonEmptyLines(routes) {
		if seen[l] {
			t.Fatalf("duplicate route %q:\n%s", l, routes)
		}
		seen[l] = true
	}
	if len(seen) < 2 {
		t.Fatalf("expected the cluster and local routes, got:\n%s", routes)
	}
}

func TestDataplaneModes(t *testing.T) {
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "dpm"})
	h := net.Hosts()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := h.Exec(ctx, meshBinary(t), "launch", "--name", h.Name, "--advertise-addr", h.Addr.String(), "--dataplane", "kernel")
	cmd.Env = append(cmd.Env, meshtest.Env()...)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "kernel WireGuard is not available") {
		t.Fatalf("--dataplane kernel: err=%v\n%s", err, out)
	}
	if links, _ := h.Run(ctx, "ip", "-o", "link", "show"); strings.Contains(links, "mesh") {
		t.Fatalf("a failed start left links behind:\n%s", links)
	}
	n := launch(t, h, nil)
	dumpLogsOnFailure(t, n)
	if st := n.MustStatus(); st.Dataplane != "userspace" {
		t.Fatalf("auto chose %q", st.Dataplane)
	}
	if !strings.Contains(n.Proc.Log(), "userspace") {
		t.Fatal("auto did not log its fallback")
	}

	// --dataplane none: gossip and IPAM only, through the same code path
	// (a data plane that changes nothing), and status says so.
	h2 := net.AddHost(t)
	ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	none := launch(t, h2, []*testnet.Host{h}, "--dataplane", "none")
	dumpLogsOnFailure(t, none)
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		st, err := none.Status()
		if err != nil {
			return err
		}
		if st.Dataplane != "none" || st.OverlayIP == "" || len(st.Connections) != 0 || len(st.Problems) != 0 {
			return fmt.Errorf("status with --dataplane none: dataplane %q, overlay %q, connections %v, problems %v", st.Dataplane, st.OverlayIP, st.Connections, st.Problems)
		}
		return nil
	})
	if links, _ := h2.Run(ctx, "ip", "-o", "link", "show"); strings.Contains(links, "mesh") {
		t.Fatalf("--dataplane none made links:\n%s", links)
	}
	conns, err := h2.Run(ctx, meshBinary(t), "status", "connections")
	if err != nil || !strings.Contains(conns, "not running") {
		t.Fatalf("mesh status connections with --dataplane none: %v\n%s", err, conns)
	}
}
