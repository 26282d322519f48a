package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// serviceIP is the "ClusterIP" of the emulated Service; TEST-NET-2, never
// routed anywhere, as a real Service IP is routed nowhere either.
const serviceIP = "198.51.100.10"

// kubeProxyRules emulates what kube-proxy in nftables mode installs for a
// Service with one endpoint: DNAT of serviceIP:80 to the endpoint, and,
// with hairpinMasq, the masquerade of a connection whose source is the
// endpoint itself (kube-proxy marks it with 0x4000 in the endpoint's chain
// and masquerades marked packets in postrouting).
func kubeProxyRules(endpoint string, hairpinMasq bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip kube-proxy-emul {\n")
	fmt.Fprintf(&b, "  chain pre { type nat hook prerouting priority dstnat; policy accept;\n")
	for _, proto := range []string{"tcp", "udp"} {
		if hairpinMasq {
			fmt.Fprintf(&b, "    ip daddr %s %s dport 80 ip saddr %s meta mark set mark | 0x4000\n", serviceIP, proto, endpoint)
		}
		fmt.Fprintf(&b, "    ip daddr %s %s dport 80 dnat to %s:8080\n", serviceIP, proto, endpoint)
	}
	fmt.Fprintf(&b, "  }\n")
	fmt.Fprintf(&b, "  chain post { type nat hook postrouting priority srcnat; policy accept;\n")
	fmt.Fprintf(&b, "    meta mark & 0x4000 == 0x4000 masquerade\n  }\n}\n")
	return b.String()
}

// iptablesRules are the same in kube-proxy's iptables mode, as arguments of
// iptables-legacy (x_tables, the other netfilter NAT implementation).
func iptablesRules(endpoint string, hairpinMasq bool) [][]string {
	var out [][]string
	for _, proto := range []string{"tcp", "udp"} {
		match := []string{"-t", "nat", "-A", "PREROUTING", "-d", serviceIP, "-p", proto, "--dport", "80"}
		if hairpinMasq {
			out = append(out, append(slices.Clone(match), "-s", endpoint, "-j", "MARK", "--set-xmark", "0x4000/0x4000"))
		}
		out = append(out, append(slices.Clone(match), "-j", "DNAT", "--to-destination", endpoint+":8080"))
	}
	return append(out, []string{"-t", "nat", "-A", "POSTROUTING", "-m", "mark", "--mark", "0x4000/0x4000", "-j", "MASQUERADE"})
}

// TestHairpinThroughService checks that a pod reaches itself through a
// Service IP DNATed to it, for TCP and UDP, with kube-proxy's rules in
// nftables and in iptables (x_tables) form, with br_netfilter passing
// bridged packets to netfilter (bridge-nf-call-iptables=1, the default in
// every network namespace of this kernel) and without it. It also pins
// down why both halves of the design are needed: without hairpin mode on
// the bridge port, or without kube-proxy's hairpin masquerade, the pod
// does not get its answer.
func TestHairpinThroughService(t *testing.T) {
	testnet.RequireCommand(t, "iptables-legacy")
	n, ctx := cniNode(t, 5*time.Minute)
	a, err := addPod(ctx, t, n.Host, "hairpin")
	if err != nil {
		t.Fatal(err)
	}
	serveWhoami(t, n.Host, a.name, ":8080")
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		_, err := askWhoami(t, n.Host, a.name, "tcp", a.ip.String()+":8080", "")
		return err
	})
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := n.Host.Run(ctx, name, args...); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	setRules := func(mode string, masq bool) {
		t.Helper()
		_, _ = n.Host.Run(ctx, "nft", "delete", "table", "ip", "kube-proxy-emul")
		for _, chain := range []string{"PREROUTING", "POSTROUTING"} {
			run("iptables-legacy", "-t", "nat", "-F", chain)
		}
		if mode == "iptables" {
			for _, r := range iptablesRules(a.ip.String(), masq) {
				run("iptables-legacy", r...)
			}
			return
		}
		cmd := n.Host.Exec(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(kubeProxyRules(a.ip.String(), masq))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("installing the kube-proxy rules: %v\n%s", err, out)
		}
	}
	const sysctl = "net.bridge.bridge-nf-call-iptables"
	if out, err := n.Host.Run(ctx, "sysctl", "-n", sysctl); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("%s in a fresh network namespace = %q (%v), want 1", sysctl, out, err)
	}
	hostVeth := func() string {
		out, err := n.Host.Run(ctx, "ip", "-o", "link", "show", "master", "mesh")
		if err != nil {
			t.Fatalf("listing bridge ports: %v\n%s", err, out)
		}
		f := strings.Fields(out)
		if len(f) < 2 {
			t.Fatalf("no port on the bridge:\n%s", out)
		}
		return strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
	}()
	out, err := n.Host.Run(ctx, "ip", "-d", "link", "show", hostVeth)
	if err != nil || !strings.Contains(out, "hairpin on") {
		t.Fatalf("mesh-cni did not set hairpin mode on %s: %v\n%s", hostVeth, err, out)
	}

	svc := serviceIP + ":80"
	reaches := func(t *testing.T) {
		t.Helper()
		// The pod sees itself come from the bridge's address, to which
		// kube-proxy's masquerade translated it.
		expectSource(t, n.Host, a.name, svc, "", netip.MustParseAddr(n.MustStatus().OverlayIP))
	}
	failsBoth := func(t *testing.T) {
		t.Helper()
		for _, network := range []string{"tcp", "udp"} {
			if got, err := askWhoami(t, n.Host, a.name, network, svc, ""); err == nil {
				t.Fatalf("%s through the Service answered (%s), want no answer", network, got)
			}
		}
	}
	for _, mode := range []string{"nftables", "iptables"} {
		for _, brnf := range []string{"1", "0"} {
			t.Run(mode+"/bridge-nf-call-iptables="+brnf, func(t *testing.T) {
				run("sysctl", "-w", sysctl+"="+brnf)
				t.Run("with kube-proxy's hairpin masquerade", func(t *testing.T) {
					setRules(mode, true)
					reaches(t)
				})
				t.Run("without it the pod gets no answer", func(t *testing.T) {
					setRules(mode, false)
					failsBoth(t)
				})
			})
		}
	}
	t.Run("without hairpin mode bridged DNAT cannot turn back", func(t *testing.T) {
		run("sysctl", "-w", sysctl+"=1")
		setRules("nftables", true)
		run("ip", "link", "set", hostVeth, "type", "bridge_slave", "hairpin", "off")
		failsBoth(t)
		// bridge-nf-call-iptables=0: the packet is routed, not bridged,
		// and hairpin mode does not matter.
		run("sysctl", "-w", sysctl+"=0")
		reaches(t)
		run("ip", "link", "set", hostVeth, "type", "bridge_slave", "hairpin", "on")
	})
}
