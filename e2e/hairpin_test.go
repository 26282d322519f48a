package e2e

import (
	"context"
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

// TestServiceToPodOnSameNode checks that a pod reaches another pod of its
// node through a Service IP DNATed to it, for TCP and UDP, in kube-proxy's
// nftables and iptables forms, with and without br_netfilter. With
// bridge-nf-call-iptables=1 the DNAT happens on the bridge and br_netfilter
// bridges the packet straight from one pod port to the other, which port
// isolation drops unless it knows the host translated it (the mark of the
// inet table's bridged-dnat chain): the DNS of a cluster whose CoreDNS runs on the
// client's node failed this way for every other query. The endpoint sees
// the client's own address: Service traffic between pods is never
// masqueraded.
func TestServiceToPodOnSameNode(t *testing.T) {
	testnet.RequireCommand(t, "iptables-legacy")
	n, ctx := cniNode(t, 5*time.Minute)
	client, err := addPod(ctx, t, n.Host, "client")
	if err != nil {
		t.Fatal(err)
	}
	server, err := addPod(ctx, t, n.Host, "server")
	if err != nil {
		t.Fatal(err)
	}
	serveWhoami(t, n.Host, server.name, ":8080")
	expectSource(t, n.Host, client.name, server.ip.String()+":8080", "", client.ip)
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := n.Host.Run(ctx, name, args...); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	const sysctl = "net.bridge.bridge-nf-call-iptables"
	for _, mode := range []string{"nftables", "iptables"} {
		for _, brnf := range []string{"1", "0"} {
			t.Run(mode+"/bridge-nf-call-iptables="+brnf, func(t *testing.T) {
				run("sysctl", "-w", sysctl+"="+brnf)
				_, _ = n.Host.Run(ctx, "nft", "delete", "table", "ip", "kube-proxy-emul")
				for _, chain := range []string{"PREROUTING", "POSTROUTING"} {
					run("iptables-legacy", "-t", "nat", "-F", chain)
				}
				if mode == "iptables" {
					for _, r := range iptablesRules(server.ip.String(), true) {
						run("iptables-legacy", r...)
					}
				} else {
					cmd := n.Host.Exec(ctx, "nft", "-f", "-")
					cmd.Stdin = strings.NewReader(kubeProxyRules(server.ip.String(), true))
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("installing the kube-proxy rules: %v\n%s", err, out)
					}
				}
				expectSource(t, n.Host, client.name, serviceIP+":80", "", client.ip)
				// NetworkPolicy's table hooks the inet forward chain:
				// bridged or routed, the translated packet passes it.
				cmd := n.Host.Exec(ctx, "nft", "-f", "-")
				cmd.Stdin = strings.NewReader(fmt.Sprintf("table inet fwd-probe {\n chain probe { type filter hook forward priority filter; policy accept;\n  ip daddr %s drop\n }\n}\n", server.ip))
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("installing the forward probe: %v\n%s", err, out)
				}
				for _, network := range []string{"tcp", "udp"} {
					if got, err := askWhoami(t, n.Host, client.name, network, serviceIP+":80", ""); err == nil {
						t.Errorf("%s through the Service answered (%s) past a drop in the inet forward hook", network, got)
					}
				}
				run("nft", "delete", "table", "inet", "fwd-probe")
			})
		}
	}
	// What the mark stands for: a frame one pod addresses straight to the
	// other's MAC, with no translation by the host, is still dropped.
	t.Run("direct frames between the pods stay dropped", func(t *testing.T) {
		run("sysctl", "-w", sysctl+"=1")
		mac := strings.TrimSpace(mustRunIn(t, n.Host, server.name, "cat", "/sys/class/net/eth0/address"))
		mustRunIn(t, n.Host, client.name, "ip", "neigh", "replace", server.ip.String(), "lladdr", mac, "dev", "eth0", "nud", "permanent")
		mustRunIn(t, n.Host, client.name, "ip", "route", "replace", server.ip.String()+"/32", "dev", "eth0")
		for _, network := range []string{"tcp", "udp"} {
			if got, err := askWhoami(t, n.Host, client.name, network, server.ip.String()+":8080", ""); err == nil {
				t.Fatalf("%s straight to the other pod's MAC answered (%s), want it dropped", network, got)
			}
		}
	})
}

// mustRunIn runs a command in a pod's network namespace.
func mustRunIn(t *testing.T, h *testnet.Host, pod string, args ...string) string {
	t.Helper()
	out, err := h.Run(context.Background(), "ip", append([]string{"netns", "exec", pod}, args...)...)
	if err != nil {
		t.Fatalf("%v in %s: %v\n%s", args, pod, err, out)
	}
	return out
}
