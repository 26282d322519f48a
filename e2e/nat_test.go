package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

func whoamiBin(t *testing.T) string { return testnet.BuildBinary(t, "./e2e/testdata/whoami") }

// inPod prefixes a command with `ip netns exec POD` unless pod is "" (the
// host itself).
func inPod(pod string, args ...string) (string, []string) {
	if pod == "" {
		return args[0], args[1:]
	}
	return "ip", append([]string{"netns", "exec", pod}, args...)
}

// serveWhoami runs a whoami server on addr in h or one of its pods; it
// dies with the test.
func serveWhoami(t *testing.T, h *testnet.Host, pod, addr string) {
	t.Helper()
	name, args := inPod(pod, whoamiBin(t), "serve", addr)
	h.Start(t, name, args, nil)
}

// askWhoami asks the whoami server at addr from h or one of its pods,
// bound to src unless it is empty, and returns the source address the
// server saw.
func askWhoami(t *testing.T, h *testnet.Host, pod, network, addr, src string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := []string{whoamiBin(t), "get", network, addr}
	if src != "" {
		cmd = append(cmd, src)
	}
	name, args := inPod(pod, cmd...)
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		return "", fmt.Errorf("%s from %s/%s to %s: %v: %s", network, h.Name, pod, addr, err, out)
	}
	return strings.TrimSpace(out), nil
}

// expectSource waits until both TCP and UDP from h (pod) to addr arrive
// with source want.
func expectSource(t *testing.T, h *testnet.Host, pod, addr, src string, want netip.Addr) {
	t.Helper()
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		for _, network := range []string{"tcp", "udp"} {
			got, err := askWhoami(t, h, pod, network, addr, src)
			if err != nil {
				return err
			}
			if got != want.String() {
				return fmt.Errorf("%s from %s/%s to %s arrived from %s, want %s", network, h.Name, pod, addr, got, want)
			}
		}
		return nil
	})
}

// restartWith restarts n's daemon with the launch arguments it started
// with plus extra.
func restartWith(t *testing.T, n *node, base []string, extra ...string) {
	t.Helper()
	if err := n.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	n.Args = append(append([]string(nil), base...), extra...)
	n.Start()
}

// TestNATAndNodeTraffic runs pods on two mesh nodes next to a plain host
// that runs no mesh, and checks who sees which source address: pods
// reaching outside the cluster range are masqueraded to their node's
// address (unless turned off), pod-to-pod traffic keeps the pod address,
// and host processes reach pods on other nodes (and the reverse) although
// WireGuard accepts only pod sources.
func TestNATAndNodeTraffic(t *testing.T) {
	tn, nodes, ctx := cniMesh(t, 2, 5*time.Minute)
	plain := tn.AddHost(t)
	a, err := addPod(ctx, t, nodes[0].Host, "nata")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addPod(ctx, t, nodes[1].Host, "natb")
	if err != nil {
		t.Fatal(err)
	}
	const port = ":8080"
	outside := plain.Addr.String() + port
	serveWhoami(t, plain, "", outside)
	serveWhoami(t, b.Host, b.name, port)
	host0 := nodes[0].Host.Addr.String() + port
	serveWhoami(t, nodes[0].Host, "", host0)
	host1 := nodes[1].Host.Addr.String() + port
	serveWhoami(t, nodes[1].Host, "", host1)
	overlay0 := netip.MustParseAddr(nodes[0].MustStatus().OverlayIP)

	t.Run("pod to outside is masqueraded to the node address", func(t *testing.T) {
		expectSource(t, a.Host, a.name, outside, "", nodes[0].Host.Addr)
	})
	t.Run("pod to pod across nodes keeps the pod address", func(t *testing.T) {
		expectSource(t, a.Host, a.name, b.ip.String()+port, "", a.ip)
	})
	t.Run("host to pod on another node", func(t *testing.T) {
		expectSource(t, nodes[0].Host, "", b.ip.String()+port, "", overlay0)
	})
	t.Run("host bound to its underlay address to pod on another node", func(t *testing.T) {
		// Without the overlay source NAT, node 1's WireGuard drops the
		// packets: their source is not in node 0's AllowedIPs.
		expectSource(t, nodes[0].Host, "", b.ip.String()+port, nodes[0].Host.Addr.String(), overlay0)
	})
	t.Run("pod to another node's address", func(t *testing.T) {
		expectSource(t, b.Host, b.name, host0, "", nodes[1].Host.Addr)
	})

	t.Run("NodePort-style forward from the underlay to a pod on another node", func(t *testing.T) {
		// What kube-proxy does for a NodePort: DNAT on the node the
		// client reached, to an endpoint that may be elsewhere.
		rules := fmt.Sprintf("table ip nodeport-emul {\n chain pre { type nat hook prerouting priority dstnat; policy accept;\n"+
			"  ip daddr %[1]s tcp dport 30080 dnat to %[2]s:8080\n  ip daddr %[1]s udp dport 30080 dnat to %[2]s:8080\n }\n}\n",
			nodes[0].Host.Addr, b.ip)
		cmd := nodes[0].Host.Exec(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
		defer nodes[0].Host.Run(ctx, "nft", "delete", "table", "ip", "nodeport-emul")
		// The client's address is outside every AllowedIPs: it enters
		// WireGuard as node 0's overlay IP.
		expectSource(t, plain, "", nodes[0].Host.Addr.String()+":30080", "", overlay0)
	})
	t.Run("pod to a NodePort of its own node with the endpoint on another node", func(t *testing.T) {
		// kube-proxy marks NodePort connections for masquerade (0x4000)
		// and masquerades them in postrouting: to the node's underlay
		// address, as the WireGuard device has none, which node 1's
		// WireGuard would drop. The upstream suite's "session affinity
		// work for NodePort service" spec, sticking to such an
		// endpoint, found it.
		rules := fmt.Sprintf("table ip nodeport-masq-emul {\n chain pre { type nat hook prerouting priority dstnat; policy accept;\n"+
			"  ip daddr %[1]s tcp dport 30081 meta mark set mark | 0x4000 dnat to %[2]s:8080\n"+
			"  ip daddr %[1]s udp dport 30081 meta mark set mark | 0x4000 dnat to %[2]s:8080\n }\n"+
			" chain post { type nat hook postrouting priority srcnat; policy accept;\n  meta mark & 0x4000 == 0x4000 masquerade\n }\n}\n",
			nodes[0].Host.Addr, b.ip)
		cmd := nodes[0].Host.Exec(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
		defer nodes[0].Host.Run(ctx, "nft", "delete", "table", "ip", "nodeport-masq-emul")
		expectSource(t, a.Host, a.name, nodes[0].Host.Addr.String()+":30081", "", overlay0)
	})

	// The plain host routes the cluster range to node 0, as an underlay
	// that routes pod addresses would.
	if out, err := plain.Run(ctx, "ip", "route", "add", "10.32.0.0/12", "via", nodes[0].Host.Addr.String()); err != nil {
		t.Fatalf("route on the plain host: %v\n%s", err, out)
	}
	base := append([]string(nil), nodes[0].Args...)
	t.Run("no-masquerade-cidrs exempts a destination", func(t *testing.T) {
		// The whole underlay, the common case.
		restartWith(t, nodes[0], base, "--no-masquerade-cidrs", "198.51.100.0/24, "+netip.PrefixFrom(nodes[0].Host.Addr, 24).Masked().String())
		expectSource(t, a.Host, a.name, outside, "", a.ip)
		expectSource(t, a.Host, a.name, b.ip.String()+port, "", a.ip)
		// Except the other mesh nodes: their answers would come through
		// WireGuard from a source outside the node's AllowedIPs.
		expectSource(t, a.Host, a.name, host1, "", nodes[0].Host.Addr)
	})
	t.Run("no-masquerade turns it off", func(t *testing.T) {
		restartWith(t, nodes[0], base, "--no-masquerade")
		expectSource(t, a.Host, a.name, outside, "", a.ip)
		expectSource(t, a.Host, a.name, b.ip.String()+port, "", a.ip)
		expectSource(t, a.Host, a.name, host1, "", nodes[0].Host.Addr)
		// The overlay source NAT stays: host traffic needs it regardless.
		expectSource(t, nodes[0].Host, "", b.ip.String()+port, nodes[0].Host.Addr.String(), overlay0)
		out, err := nodes[0].Host.Run(ctx, "nft", "list", "table", "ip", "mesh-nat")
		if err != nil || strings.Contains(out, "ip saddr 10.32.0.0/12 masquerade") || !strings.Contains(out, "snat to "+overlay0.String()) {
			t.Fatalf("with --no-masquerade the table is: %v\n%s", err, out)
		}
	})
	t.Run("masquerade is back and restored when deleted", func(t *testing.T) {
		restartWith(t, nodes[0], base)
		expectSource(t, a.Host, a.name, outside, "", nodes[0].Host.Addr)
		if out, err := nodes[0].Host.Run(ctx, "nft", "delete", "table", "ip", "mesh-nat"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		// Within a reconcile interval (5 s) the daemon puts it back.
		testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
			out, err := nodes[0].Host.Run(ctx, "nft", "list", "table", "ip", "mesh-nat")
			if err != nil || !strings.Contains(out, "masquerade") {
				return fmt.Errorf("table not restored: %v\n%s", err, out)
			}
			return nil
		})
	})
	t.Run("stop keeps the table, reset removes it", func(t *testing.T) {
		if err := nodes[0].Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		// A stopped daemon leaves it, as it leaves the interfaces: pods
		// keep reaching out while the daemon restarts.
		if out, err := nodes[0].Host.Run(ctx, "nft", "list", "table", "ip", "mesh-nat"); err != nil || !strings.Contains(out, "masquerade") {
			t.Fatalf("table gone after the daemon stopped: %v\n%s", err, out)
		}
		if out, err := nodes[0].Host.Run(ctx, meshBinary(t), "reset"); err != nil {
			t.Fatalf("mesh reset: %v\n%s", err, out)
		}
		if out, err := nodes[0].Host.Run(ctx, "nft", "list", "table", "ip", "mesh-nat"); err == nil {
			t.Fatalf("table left after mesh reset:\n%s", out)
		}
	})
}
