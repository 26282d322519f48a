package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshnet/mesh/internal/testnet"
)

// The isolation tests: attackers in pods (with CAP_NET_RAW, as pods have
// by default) and on the underlay, against pods wired by the real mesh-cni
// and a real daemon. Each attack is paired with a control (the same send
// done honestly) that must get through, so a test cannot pass because the
// probe itself is broken.

func attacker(t *testing.T) string {
	return testnet.BuildBinary(t, "github.com/meshnet/mesh/internal/attacker")
}

// udpReceived runs a UDP listener on port in pod p (or on host h when p is
// nil), calls send once the listener is up, and returns the source
// addresses and tags of the datagrams received within a few seconds, as
// "IP TAG".
func udpReceived(ctx context.Context, t *testing.T, h *testnet.Host, p *pod, port int, send func() error) ([]string, error) {
	args := []string{attacker(t), "udp-listen", "-port", fmt.Sprint(port), "-for", "4s"}
	if p != nil {
		args = append([]string{"netns", "exec", p.name}, args...)
		h = p.Host
	}
	return readDatagrams(h.Exec(ctx, "ip", args...), send)
}

// readDatagrams starts cmd, an attacker udp-listen, calls send once it
// listens, and returns what it received, as "IP TAG".
func readDatagrams(cmd *exec.Cmd, send func() error) ([]string, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer cmd.Wait()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "listening" {
		return nil, fmt.Errorf("UDP listener did not start: %q", sc.Text())
	}
	if err := send(); err != nil {
		return nil, err
	}
	var from []string
	for sc.Scan() {
		if f, ok := strings.CutPrefix(sc.Text(), "from "); ok {
			from = append(from, f)
		}
	}
	return from, nil
}

// spoofUDP sends from pod p (or host h) UDP datagrams with source src.
func spoofUDP(ctx context.Context, t *testing.T, h *testnet.Host, p *pod, src, dst netip.Addr, port int, tag string) error {
	args := []string{attacker(t), "udp-send", "-src", src.String(), "-dst", dst.String(), "-port", fmt.Sprint(port), "-tag", tag}
	var out string
	var err error
	if p != nil {
		out, err = p.exec(ctx, args...)
	} else {
		out, err = h.Run(ctx, args[0], args[1:]...)
	}
	if err != nil {
		return fmt.Errorf("udp-send: %v\n%s", err, out)
	}
	return nil
}

func neighMAC(ctx context.Context, h *testnet.Host, p *pod, addr, dev string) string {
	args := []string{"neigh", "show", addr, "dev", dev}
	var out string
	if p != nil {
		out, _ = p.exec(ctx, append([]string{"ip"}, args...)...)
	} else {
		out, _ = h.Run(ctx, "ip", args...)
	}
	f := strings.Fields(out)
	for i, w := range f {
		if w == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func linkMAC(ctx context.Context, t *testing.T, h *testnet.Host, p *pod, dev string) string {
	t.Helper()
	args := []string{"ip", "-o", "link", "show", dev}
	var out string
	var err error
	if p != nil {
		out, err = p.exec(ctx, args...)
	} else {
		out, err = h.Run(ctx, args[0], args[1:]...)
	}
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	f := strings.Fields(out)
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no MAC in %q", out)
	return ""
}

// TestPortIsolation: pods a (victim), b (attacker) and c (a pod a trusts) on
// one node; b attacks at layer 2 and over IPv6.
func TestPortIsolation(t *testing.T) {
	n, ctx := cniNode(t, 4*time.Minute)
	h := n.Host
	var pods []*pod
	for _, name := range []string{"poda", "podb", "podc"} {
		p, err := addPod(ctx, t, h, name)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	a, b, c := pods[0], pods[1], pods[2]
	gw := n.MustStatus().OverlayIP
	bridge := "mesh"

	t.Run("arp-spoof", func(t *testing.T) {
		// Fill the neighbour caches first: the host's entry for a, and a's
		// for its gateway. Linux then takes a gratuitous ARP reply as an
		// update, after its locktime (1 s).
		if out, err := a.exec(ctx, "ping", "-c", "1", "-W", "2", gw); err != nil {
			t.Fatalf("a cannot ping its gateway: %v\n%s", err, out)
		}
		aMAC, gwMAC := linkMAC(ctx, t, h, a, "eth0"), linkMAC(ctx, t, h, nil, bridge)
		time.Sleep(1500 * time.Millisecond)
		// b claims a's address (to the host) and the gateway's (to a).
		for _, claim := range []string{a.ip.String(), gw} {
			if out, err := b.exec(ctx, attacker(t), "arp", "-dev", "eth0", "-claim", claim); err != nil {
				t.Fatalf("arp: %v\n%s", err, out)
			}
		}
		if got := neighMAC(ctx, h, nil, a.ip.String(), bridge); got != aMAC {
			t.Errorf("the host's neighbour entry for pod a is %q, want a's MAC %s: b's ARP spoofing got through", got, aMAC)
		}
		if got := neighMAC(ctx, h, a, gw, "eth0"); got != gwMAC {
			t.Errorf("pod a's neighbour entry for its gateway is %q, want the bridge's MAC %s: b's ARP spoofing got through", got, gwMAC)
		}
	})

	t.Run("mac-spoof", func(t *testing.T) {
		// b sends frames from a's MAC: the bridge must not learn a's MAC
		// on b's port (it would send a's traffic to b).
		if out, err := a.exec(ctx, "ping", "-c", "1", "-W", "2", gw); err != nil {
			t.Fatalf("a cannot ping its gateway: %v\n%s", err, out)
		}
		aMAC, gwMAC := linkMAC(ctx, t, h, a, "eth0"), linkMAC(ctx, t, h, nil, bridge)
		aPort := hostPort(ctx, t, h, a)
		if out, err := b.exec(ctx, attacker(t), "l2-udp", "-dev", "eth0", "-dstmac", gwMAC, "-srcmac", aMAC, "-src", b.ip.String(), "-dst", gw, "-port", "9996", "-tag", "macspoof"); err != nil {
			t.Fatalf("l2-udp: %v\n%s", err, out)
		}
		out, err := h.Run(ctx, "bridge", "fdb", "show", "br", bridge)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, aMAC+" ") && !strings.Contains(l, "dev "+aPort+" ") {
				t.Errorf("the bridge learned pod a's MAC on another port than a's (%s): %q", aPort, l)
			}
		}
	})

	t.Run("ipv4-source-spoof", func(t *testing.T) {
		from, err := udpReceived(ctx, t, nil, a, 9999, func() error {
			if err := spoofUDP(ctx, t, h, b, c.ip, a.ip, 9999, "forged"); err != nil {
				return err
			}
			return spoofUDP(ctx, t, h, b, b.ip, a.ip, 9999, "control")
		})
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(from, " ")
		if strings.Contains(got, c.ip.String()+" forged") {
			t.Errorf("pod a received datagrams from b forged with c's source %s: %v", c.ip, from)
		}
		if !strings.Contains(got, b.ip.String()+" control") {
			t.Errorf("pod a did not receive b's honest datagrams (the control): %v", from)
		}
	})

	t.Run("no-redirects", func(t *testing.T) {
		// Pod-to-pod traffic enters and leaves the bridge: the host must
		// not redirect the sender to the other pod's MAC (which would go
		// past NetworkPolicy, and into the pod-to-pod drop).
		for range 2 {
			out, err := a.exec(ctx, "ping", "-c", "3", "-i", "0.3", "-W", "1", b.ip.String())
			if err != nil || strings.Contains(out, "Redirect") || !strings.Contains(out, "3 received") {
				t.Fatalf("a to b: %v\n%s", err, out)
			}
		}
		if out, _ := a.exec(ctx, "ip", "route", "get", b.ip.String()); !strings.Contains(out, "via "+gw) {
			t.Errorf("pod a's route to b does not go through the gateway: %s", out)
		}
	})

	t.Run("pod-to-pod-bridged", func(t *testing.T) {
		// b addresses a's MAC directly: the bridge would deliver it port
		// to port, never through the host's forward hook where
		// NetworkPolicy is enforced.
		aMAC := linkMAC(ctx, t, h, a, "eth0")
		from, err := udpReceived(ctx, t, nil, a, 9997, func() error {
			if out, err := b.exec(ctx, attacker(t), "l2-udp", "-dev", "eth0", "-dstmac", aMAC, "-src", b.ip.String(), "-dst", a.ip.String(), "-port", "9997", "-tag", "bridged"); err != nil {
				return fmt.Errorf("l2-udp: %v\n%s", err, out)
			}
			return spoofUDP(ctx, t, h, b, b.ip, a.ip, 9997, "control")
		})
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(from, ",")
		if strings.Contains(got, "bridged") {
			t.Errorf("pod a received frames b sent straight to its MAC, past the host: %v", from)
		}
		if !strings.Contains(got, b.ip.String()+" control") {
			t.Errorf("pod a did not receive b's datagrams through the gateway (the control): %v", from)
		}
	})

	t.Run("ipv6-link-local", func(t *testing.T) {
		var ll string
		testnet.Eventually(t, 20*time.Second, 200*time.Millisecond, func() error {
			out, err := b.exec(ctx, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link")
			if err != nil {
				return err
			}
			f := strings.Fields(out)
			for i, w := range f {
				if w == "inet6" && i+1 < len(f) && !strings.Contains(out, "tentative") {
					ll = strings.Split(f[i+1], "/")[0]
					return nil
				}
			}
			return fmt.Errorf("pod b has no usable link-local address yet: %q", out)
		})
		if out, err := a.exec(ctx, "ping", "-6", "-c", "2", "-W", "1", ll+"%eth0"); err == nil {
			t.Errorf("pod a reached pod b's link-local address %s over IPv6:\n%s", ll, out)
		}
		if out, err := a.exec(ctx, "ping", "-c", "1", "-W", "2", b.ip.String()); err != nil {
			t.Errorf("pod a cannot reach pod b over IPv4 (the control): %v\n%s", err, out)
		}
	})

	t.Run("router-advertisement", func(t *testing.T) {
		if out, err := b.exec(ctx, attacker(t), "ra", "-dev", "eth0", "-prefix", "2001:db8:1::/64"); err != nil {
			t.Fatalf("ra: %v\n%s", err, out)
		}
		time.Sleep(2 * time.Second) // address autoconfiguration is immediate; give it time anyway
		if out, _ := a.exec(ctx, "ip", "-6", "addr", "show"); strings.Contains(out, "2001:db8:1:") {
			t.Errorf("pod a configured an address from b's router advertisement:\n%s", out)
		}
		if out, _ := a.exec(ctx, "ip", "-6", "route", "show", "default"); strings.Contains(out, "default") {
			t.Errorf("pod a took b as its IPv6 default router:\n%s", out)
		}
		if out, _ := h.Run(ctx, "ip", "-6", "addr", "show", "dev", bridge); strings.Contains(out, "2001:db8:1:") {
			t.Errorf("the host configured an address from b's router advertisement:\n%s", out)
		}
		if out, _ := h.Run(ctx, "ip", "-6", "route", "show", "default"); strings.Contains(out, "default") {
			t.Errorf("the host took pod b as its IPv6 default router:\n%s", out)
		}
	})

	t.Run("counted", func(t *testing.T) {
		out, err := h.Run(ctx, "curl", "-sf", "http://127.0.0.1:6782/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, reason := range []string{"spoofed", "ipv6", "pod-to-pod"} {
			if !metricPositive(out, `mesh_isolation_dropped_packets_total{reason="`+reason+`"}`) {
				t.Errorf("no drops counted for %s:\n%s", reason, grepLines(out, "mesh_isolation"))
			}
		}
	})

	t.Run("restored-after-flush", func(t *testing.T) {
		if out, err := h.Run(ctx, "nft", "flush", "ruleset"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		testnet.Eventually(t, 20*time.Second, 250*time.Millisecond, func() error {
			out, err := h.Run(ctx, "nft", "list", "table", "bridge", "mesh-isolation")
			if err != nil {
				return err
			}
			for _, p := range pods {
				if !strings.Contains(out, p.ip.String()) {
					return fmt.Errorf("port of %s not restored:\n%s", p.ip, out)
				}
			}
			return nil
		})
		from, err := udpReceived(ctx, t, nil, a, 9998, func() error {
			if err := spoofUDP(ctx, t, h, b, c.ip, a.ip, 9998, "forged"); err != nil {
				return err
			}
			return spoofUDP(ctx, t, h, b, b.ip, a.ip, 9998, "control")
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(from, ","); strings.Contains(got, "forged") || !strings.Contains(got, "control") {
			t.Errorf("after restoring: pod a received %v, want only b's control datagrams", from)
		}
		out, err := h.Run(ctx, "curl", "-sf", "http://127.0.0.1:6782/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if !metricPositive(out, "mesh_isolation_restores_total") {
			t.Errorf("restore not counted:\n%s", grepLines(out, "mesh_isolation"))
		}
	})
}

func metricPositive(metrics, name string) bool {
	v, ok := metricValue(metrics, name)
	return ok && v != 0
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestUnderlaySpoofedSource: a host on the underlay that runs no mesh sends
// a packet forged with the address of a pod of another node straight to a
// pod here, bypassing WireGuard. It must not arrive; the same datagram sent
// by that pod through the mesh must.
func TestUnderlaySpoofedSource(t *testing.T) {
	tn, nodes, ctx := cniMesh(t, 2, 4*time.Minute)
	evil := tn.AddHost(t)
	p1, err := addPod(ctx, t, nodes[0].Host, "pod1")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := addPod(ctx, t, nodes[1].Host, "pod2")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := evil.Run(ctx, "ip", "route", "add", p1.ip.String()+"/32", "via", nodes[0].Host.Addr.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	from, err := udpReceived(ctx, t, nil, p1, 9999, func() error {
		if err := spoofUDP(ctx, t, evil, nil, p2.ip, p1.ip, 9999, "forged"); err != nil {
			return err
		}
		return spoofUDP(ctx, t, nil, p2, p2.ip, p1.ip, 9999, "control") // through the mesh
	})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(from, ",")
	if strings.Contains(got, "forged") {
		t.Errorf("pod 1 received datagrams forged with pod 2's source %s from the underlay: %v", p2.ip, from)
	}
	if !strings.Contains(got, p2.ip.String()+" control") {
		t.Errorf("pod 1 did not receive pod 2's datagrams through the mesh (the control): %v", from)
	}
	out, err := nodes[0].Host.Run(ctx, "curl", "-sf", "http://127.0.0.1:6782/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !metricPositive(out, `mesh_isolation_dropped_packets_total{reason="underlay-spoofed"}`) {
		t.Errorf("forged underlay packets not counted:\n%s", grepLines(out, "mesh_isolation"))
	}
}

// conntrackOf lists the host's conntrack entries that involve addr.
func conntrackOf(h *testnet.Host, addr netip.Addr) ([]string, error) {
	var out []string
	err := h.Do(func() error {
		family := netlink.InetFamily(unix.AF_INET)
		if addr.Is6() {
			family = unix.AF_INET6
		}
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			return err
		}
		for _, f := range flows {
			for _, ip := range []net.IP{f.Forward.SrcIP, f.Forward.DstIP, f.Reverse.SrcIP, f.Reverse.DstIP} {
				if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap() == addr {
					out = append(out, f.String())
					break
				}
			}
		}
		return nil
	})
	return out, err
}

// TestReleaseFlushesConntrack: a flow of a pod must not live on in the
// host's connection tracking after its address is released, or its
// replies (and, for UDP, the flow itself, as "established") would reach
// the next pod given the address.
func TestReleaseFlushesConntrack(t *testing.T) {
	ctx, n, a, b := twoPodsOnOneNode(t, 2*time.Minute)
	h := n.Host
	// Connection tracking runs in a netns only once a rule needs it (the
	// policy table does, with --kube): ask for it as a policy would.
	if out, err := h.Run(ctx, "nft", "add table inet cttest { chain f { type filter hook forward priority 0; ct state established accept; }; }"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := spoofUDP(ctx, t, h, a, a.ip, b.ip, 9999, "flow"); err != nil {
		t.Fatal(err)
	}
	if flows, err := conntrackOf(h, b.ip); err != nil || len(flows) == 0 {
		t.Fatalf("no conntrack entry for the flow to pod b (%v): the test shows nothing", err)
	}
	if out, err := runCNI(ctx, t, h, "del", "mesh", "/run/netns/podb"); err != nil {
		t.Fatalf("DEL: %v\n%s", err, out)
	}
	if flows, err := conntrackOf(h, b.ip); err != nil || len(flows) != 0 {
		t.Errorf("conntrack entries of released address %s left (%v):\n%s", b.ip, err, strings.Join(flows, "\n"))
	}
}

// TestIsolationAdoptsPodsOfPreviousRelease: a pod wired by a release
// before port isolation has a random MAC, not the fixed one, and may have
// learnt from the host's ICMP redirects to reach a pod of its node straight
// by its MAC. After the upgrade (a daemon restart with isolation) it must
// keep its connectivity.
func TestIsolationAdoptsPodsOfPreviousRelease(t *testing.T) {
	ctx, n, a, b := twoPodsOnOneNode(t, 2*time.Minute, "--no-port-isolation") // as the previous release
	h := n.Host
	// What the previous release's plugin left: a random MAC.
	if out, err := a.exec(ctx, "ip", "link", "set", "eth0", "address", "02:11:22:33:44:55"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := a.exec(ctx, "ping", "-c", "2", "-W", "1", b.ip.String()); err != nil || !strings.Contains(out, "Redirect") {
		t.Fatalf("no redirect from the host without isolation (%v): the test shows less than it should\n%s", err, out)
	}
	if err := n.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	n.Args = slices.DeleteFunc(n.Args, func(s string) bool { return s == "--no-port-isolation" })
	n.Start()
	testnet.Eventually(t, 20*time.Second, 500*time.Millisecond, func() error {
		for _, p := range [][2]*pod{{a, b}, {b, a}} {
			out, err := p[0].exec(ctx, "ping", "-c", "1", "-W", "1", p[1].ip.String())
			if err != nil {
				return fmt.Errorf("%s cannot reach %s after the upgrade: %v\n%s", p[0].name, p[1].name, err, out)
			}
		}
		return nil
	})
	if !strings.Contains(n.Proc.Log(), "pod wired before port isolation") {
		t.Errorf("adoption not logged")
	}
	if out, _ := h.Run(ctx, "nft", "list", "set", "bridge", "mesh-isolation", "legacy"); !strings.Contains(out, "vmesh") {
		t.Errorf("pod a's port not marked legacy:\n%s", out)
	}
}

// hostPort returns the name of the host end of pod p's eth0.
func hostPort(ctx context.Context, t *testing.T, h *testnet.Host, p *pod) string {
	t.Helper()
	out, err := p.exec(ctx, "ip", "-o", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	_, idx, ok := strings.Cut(strings.Fields(out)[1], "@if")
	if !ok {
		t.Fatalf("no peer index in %q", out)
	}
	idx = strings.TrimSuffix(idx, ":")
	out, err = h.Run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == idx+":" {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			return name
		}
	}
	t.Fatalf("no host link with index %s:\n%s", idx, out)
	return ""
}

// twoPodsOnOneNode launches one daemon (with extra flags), waits for its
// CNI plugin and adds the pods poda and podb through mesh-cni; the context
// ends after timeout or with the test.
func twoPodsOnOneNode(t *testing.T, timeout time.Duration, extra ...string) (context.Context, *node, *pod, *pod) {
	t.Helper()
	n, ctx := cniNode(t, timeout, extra...)
	a, err := addPod(ctx, t, n.Host, "poda")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addPod(ctx, t, n.Host, "podb")
	if err != nil {
		t.Fatal(err)
	}
	return ctx, n, a, b
}
