package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// Dual-stack cluster ranges of the tests (docs/ipam.md, "Dual-stack").
const (
	dualRange4 = "10.32.0.0/16"
	dualRange6 = "fd32::/48"
	// ipv6OnlyRange is the one range of the IPv6-only meshes.
	ipv6OnlyRange = "fd33::/48"
)

// dualFlags are the launch flags of a dual-stack node: the flag once per
// family.
var dualFlags = []string{"--ipalloc-range", dualRange4, "--ipalloc-range", dualRange6}

// dualPod is a pod wired by mesh-cni in a dual-stack mesh.
type dualPod struct {
	*pod
	ip6 netip.Addr
}

// addDualPod runs ADD and wants the result to list an IPv4 and an IPv6
// address, in that order, each with a gateway of its family.
func addDualPod(ctx context.Context, t *testing.T, h *testnet.Host, name string) (*dualPod, error) {
	if out, err := h.Run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	out, err := runCNI(ctx, t, h, "add", "mesh", "/run/netns/"+name)
	if err != nil {
		return nil, fmt.Errorf("cnitool add on %s: %v\n%s", h.Name, err, out)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
		Routes []struct {
			Dst string `json:"dst"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 2 {
		return nil, fmt.Errorf("ADD result %q: %v, want two addresses", out, err)
	}
	var addrs [2]netip.Addr
	for i, ip := range res.IPs {
		p, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return nil, fmt.Errorf("ADD result address %q: %w", ip.Address, err)
		}
		gw, err := netip.ParseAddr(ip.Gateway)
		if err != nil || gw.Is4() != p.Addr().Is4() || !p.IsSingleIP() {
			return nil, fmt.Errorf("ADD result %s gateway %q: want a host prefix and a gateway of its family", p, ip.Gateway)
		}
		addrs[i] = p.Addr()
	}
	if !addrs[0].Is4() || !addrs[1].Is6() {
		return nil, fmt.Errorf("ADD result addresses %v, want IPv4 then IPv6", addrs)
	}
	dsts := map[string]bool{}
	for _, r := range res.Routes {
		dsts[r.Dst] = true
	}
	if !dsts["0.0.0.0/0"] || !dsts["::/0"] {
		return nil, fmt.Errorf("ADD result routes %v, want a default route per family", res.Routes)
	}
	return &dualPod{pod: &pod{Host: h, name: name, ip: addrs[0]}, ip6: addrs[1]}, nil
}

// ping pings dst from p: a few packets, bounded in time.
func (p *dualPod) ping(ctx context.Context, dst netip.Addr) error {
	args := []string{"ping", "-c", "2", "-i", "0.2", "-W", "2", dst.String()}
	if dst.Is6() {
		args = slices.Insert(args, 1, "-6")
	}
	if out, err := p.exec(ctx, args...); err != nil {
		return fmt.Errorf("%s (%s on %s) cannot ping %s: %v\n%s", p.name, p.ip, p.Host.Name, dst, err, out)
	}
	return nil
}

// TestDualStackMesh: three dual-stack hosts. Each ADD gives a pod an
// address of each family, and the pod pings its IPv6 gateway at once (no
// duplicate address detection to wait for); pods reach each other over
// both families, on one node and across nodes; a pod cannot send from
// another pod's IPv6 address; a SIGKILLed daemon comes back with both
// families' ranges and addresses; DEL frees both.
func TestDualStackMesh(t *testing.T) {
	_, nodes, ctx := cniMesh(t, 3, 5*time.Minute, dualFlags...)
	for _, n := range nodes {
		st := n.MustStatus()
		if st.IPAM6 == nil || st.IPAM6.Status != "ready" || st.IPAM6.Range != dualRange6 || st.OverlayIP6 == "" {
			t.Fatalf("%s: IPv6 IPAM %+v, overlay %q: want ready on %s with an overlay address", n.Host.Name, st.IPAM6, st.OverlayIP6, dualRange6)
		}
		if st.IPAM.Range != dualRange4 {
			t.Fatalf("%s: IPv4 IPAM range %s, want %s", n.Host.Name, st.IPAM.Range, dualRange4)
		}
	}

	var pods []*dualPod
	for i, n := range append(nodes, nodes[0]) {
		p, err := addDualPod(ctx, t, n.Host, fmt.Sprintf("dual%d", i))
		if err != nil {
			t.Fatal(err)
		}
		// Right after ADD: no DAD wait, the first ping gets through.
		gw6 := netip.MustParseAddr(n.MustStatus().OverlayIP6)
		if out, err := p.exec(ctx, "ping", "-6", "-c", "1", "-W", "2", gw6.String()); err != nil {
			t.Fatalf("ping -6 of the gateway %s right after ADD failed: %v\n%s", gw6, err, out)
		}
		pods = append(pods, p)
	}
	for _, n := range nodes {
		st := n.MustStatus()
		want := 1
		if n == nodes[0] {
			want = 2
		}
		if st.IPAM.Allocated != want || st.IPAM6.Allocated != want {
			t.Fatalf("%s: %d IPv4 and %d IPv6 allocations, want %d of each", n.Host.Name, st.IPAM.Allocated, st.IPAM6.Allocated, want)
		}
	}

	t.Run("pod-to-pod", func(t *testing.T) {
		for _, a := range pods {
			for _, b := range pods {
				if a == b {
					continue
				}
				for _, dst := range []netip.Addr{b.ip, b.ip6} {
					if err := a.ping(ctx, dst); err != nil {
						t.Error(err)
					}
				}
			}
		}
	})

	t.Run("ipv6-source-spoof", func(t *testing.T) {
		// pods[3] shares node 0 with pods[0]; it forges pods[1]'s IPv6
		// address towards pods[0] (on its own node, so that only port
		// isolation stands in the way: across nodes WireGuard would drop
		// a source outside the sender's AllowedIPs too).
		forger, victim, target := pods[3], pods[1], pods[0]
		from, err := udpReceived6(ctx, t, nil, target, 9996, func() error {
			if err := spoofUDP6(ctx, t, forger, victim.ip6, target.ip6, 9996, "forged"); err != nil {
				return err
			}
			return spoofUDP6(ctx, t, forger, forger.ip6, target.ip6, 9996, "control")
		})
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(from, " ")
		if strings.Contains(got, "forged") {
			t.Errorf("%s received datagrams forged with %s's source %s: %v", target.name, victim.name, victim.ip6, from)
		}
		if !strings.Contains(got, forger.ip6.String()+" control") {
			t.Errorf("%s did not receive the honest datagrams (the control): %v", target.name, from)
		}
		out, err := nodes[0].Host.Run(ctx, "curl", "-sf", "http://127.0.0.1:6782/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if !metricPositive(out, `mesh_isolation_dropped_packets_total{reason="spoofed"}`) {
			t.Errorf("no spoofed drop counted:\n%s", grepLines(out, "mesh_isolation"))
		}
	})

	t.Run("router-advertisement", func(t *testing.T) {
		a, b := pods[0], pods[3] // one node
		if out, err := b.exec(ctx, attacker(t), "ra", "-dev", "eth0", "-prefix", "2001:db8:1::/64"); err != nil {
			t.Fatalf("ra: %v\n%s", err, out)
		}
		time.Sleep(2 * time.Second)
		if out, _ := a.exec(ctx, "ip", "-6", "addr", "show"); strings.Contains(out, "2001:db8:1:") {
			t.Errorf("pod a configured an address from b's router advertisement:\n%s", out)
		}
		if out, _ := a.exec(ctx, "ip", "-6", "route", "show", "default"); strings.Contains(out, "fe80") {
			t.Errorf("pod a took b as its IPv6 default router:\n%s", out)
		}
	})

	t.Run("restart-keeps-both-families", func(t *testing.T) {
		n := nodes[0]
		before := n.MustStatus()
		if err := n.Proc.Kill(); err != nil {
			t.Fatal(err)
		}
		n.Start()
		testnet.Eventually(t, 90*time.Second, 250*time.Millisecond, func() error {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.IPAM.Status != "ready" || st.IPAM6 == nil || st.IPAM6.Status != "ready" || st.IPAM.Allocated != 2 || st.IPAM6.Allocated != 2 {
				return fmt.Errorf("after restart: IPv4 %+v, IPv6 %+v", st.IPAM, st.IPAM6)
			}
			return nil
		})
		after := n.MustStatus()
		if after.OverlayIP6 != before.OverlayIP6 || after.OverlayIP != before.OverlayIP {
			t.Errorf("overlay addresses %s, %s after restart; were %s, %s", after.OverlayIP, after.OverlayIP6, before.OverlayIP, before.OverlayIP6)
		}
		if !slices.Equal(after.IPAM6.Owned, before.IPAM6.Owned) || !slices.Equal(after.IPAM.Owned, before.IPAM.Owned) {
			t.Errorf("owned ranges after restart: IPv4 %v, IPv6 %v; were %v, %v", after.IPAM.Owned, after.IPAM6.Owned, before.IPAM.Owned, before.IPAM6.Owned)
		}
		for _, p := range []*dualPod{pods[0], pods[3]} {
			if out, err := runCNI(ctx, t, n.Host, "check", "mesh", "/run/netns/"+p.name); err != nil {
				t.Errorf("CHECK of %s after restart: %v\n%s", p.name, err, out)
			}
		}
		// Same container, same addresses.
		again, err := runCNI(ctx, t, n.Host, "add", "mesh", "/run/netns/"+pods[0].name)
		if err != nil || !strings.Contains(again, pods[0].ip6.String()) || !strings.Contains(again, pods[0].ip.String()) {
			t.Errorf("repeated ADD after restart: %v\n%s\nwant %s and %s", err, again, pods[0].ip, pods[0].ip6)
		}
		testnet.Eventually(t, 60*time.Second, time.Second, func() error {
			for _, dst := range []netip.Addr{pods[1].ip6, pods[2].ip6, pods[1].ip} {
				if err := pods[0].ping(ctx, dst); err != nil {
					return err
				}
			}
			return nil
		})
	})

	t.Run("del-frees-both", func(t *testing.T) {
		p := pods[1]
		h := p.Host
		// Connection tracking runs in a netns only once a rule needs it
		// (as in TestReleaseFlushesConntrack).
		if out, err := h.Run(ctx, "nft", "add table inet cttest { chain f { type filter hook forward priority 0; ct state established accept; }; }"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		defer h.Run(ctx, "nft", "delete table inet cttest")
		if err := p.ping(ctx, pods[0].ip6); err != nil {
			t.Fatal(err)
		}
		if flows, err := conntrackOf(h, p.ip6); err != nil || len(flows) == 0 {
			t.Fatalf("no conntrack entry of %s (%v): the check below shows nothing", p.ip6, err)
		}
		for i := range 2 {
			if out, err := runCNI(ctx, t, p.Host, "del", "mesh", "/run/netns/"+p.name); err != nil {
				t.Fatalf("DEL #%d: %v\n%s", i+1, err, out)
			}
		}
		st := nodes[1].MustStatus()
		if st.IPAM.Allocated != 0 || st.IPAM6.Allocated != 0 {
			t.Errorf("after DEL: %d IPv4 and %d IPv6 allocations, want none", st.IPAM.Allocated, st.IPAM6.Allocated)
		}
		if flows, err := conntrackOf(h, p.ip6); err != nil || len(flows) != 0 {
			t.Errorf("conntrack entries of released address %s left (%v):\n%s", p.ip6, err, strings.Join(flows, "\n"))
		}
	})
}

// TestDualStackFailedADDLeavesNothing: when a node has no IPv6 address left
// to give, ADD fails and the IPv4 address it took first is released: both
// families hold the same allocations after it.
func TestDualStackFailedADDLeavesNothing(t *testing.T) {
	// An IPv6 range of four addresses: the node's gateway and three pods.
	n, ctx := cniNode(t, 3*time.Minute, "--ipalloc-range", dualRange4, "--ipalloc-range", "fd32::/126")
	var added int
	var lastErr error
	for i := range 5 {
		if _, err := addDualPod(ctx, t, n.Host, fmt.Sprintf("full%d", i)); err != nil {
			lastErr = err
			break
		}
		added++
	}
	if lastErr == nil {
		t.Fatalf("%d ADDs succeeded in an IPv6 range of four addresses", added)
	}
	if !strings.Contains(lastErr.Error(), "IPv6") {
		t.Errorf("ADD error does not name IPv6: %v", lastErr)
	}
	st := n.MustStatus()
	if st.IPAM.Allocated != added || st.IPAM6.Allocated != added {
		t.Fatalf("after %d ADDs and a failed one: %d IPv4 and %d IPv6 allocations, want %d of each", added, st.IPAM.Allocated, st.IPAM6.Allocated, added)
	}
	links, _ := n.Host.Run(ctx, "ip", "-o", "link", "show")
	if c := strings.Count(links, "vmesh"); c != added {
		t.Errorf("%d pod veths after %d ADDs and a failed one:\n%s", c, added, links)
	}
}

// udpReceived6 is udpReceived for IPv6, in pod p or, when p is nil, on
// host h.
func udpReceived6(ctx context.Context, t *testing.T, h *testnet.Host, p *dualPod, port int, send func() error) ([]string, error) {
	args := []string{attacker(t), "udp-listen", "-net", "udp6", "-port", fmt.Sprint(port), "-for", "4s"}
	if p != nil {
		h = p.Host
		args = append([]string{"ip", "netns", "exec", p.name}, args...)
	}
	return readDatagrams(h.Exec(ctx, args[0], args[1:]...), send)
}

// spoofUDP6 sends IPv6 datagrams from pod p with source src.
func spoofUDP6(ctx context.Context, t *testing.T, p *dualPod, src, dst netip.Addr, port int, tag string) error {
	if out, err := p.exec(ctx, attacker(t), "udp6-send", "-src", src.String(), "-dst", dst.String(), "-port", fmt.Sprint(port), "-tag", tag); err != nil {
		return fmt.Errorf("udp6-send: %v\n%s", err, out)
	}
	return nil
}

// TestDualStackMixedMesh: a node configured without the IPv6 range (as a
// node of the release before dual-stack, which drops the IPv6 ring's gossip
// channel) in a dual-stack mesh: IPv4 works between all pods, IPv6 between
// the dual-stack ones, and the dual-stack nodes name the other in status.
func TestDualStackMixedMesh(t *testing.T) {
	_, nodes, ctx := cniMeshFlags(t, 3, 4*time.Minute, func(i int) []string {
		if i == 2 {
			return []string{"--ipalloc-range", dualRange4}
		}
		return dualFlags
	})
	a, err := addDualPod(ctx, t, nodes[0].Host, "mixa")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addDualPod(ctx, t, nodes[1].Host, "mixb")
	if err != nil {
		t.Fatal(err)
	}
	c, err := addPod(ctx, t, nodes[2].Host, "mixc")
	if err != nil {
		t.Fatal(err)
	}
	if st := nodes[2].MustStatus(); st.IPAM6 != nil || st.OverlayIP6 != "" {
		t.Errorf("the IPv4-only node reports an IPv6 IPAM: %+v %q", st.IPAM6, st.OverlayIP6)
	}
	for _, step := range []struct {
		from *pod
		to   netip.Addr
	}{{a.pod, b.ip}, {a.pod, c.ip}, {c, a.ip}, {c, b.ip}, {a.pod, b.ip6}, {b.pod, a.ip6}} {
		p := &dualPod{pod: step.from}
		if err := p.ping(ctx, step.to); err != nil {
			t.Error(err)
		}
	}
	name := nodes[2].MustStatus().Name
	testnet.Eventually(t, 90*time.Second, time.Second, func() error {
		for _, n := range nodes[:2] {
			st := n.MustStatus()
			if !slices.ContainsFunc(st.IPAM6.Problems, func(p string) bool { return strings.Contains(p, name) && strings.Contains(p, "no IPv6") }) {
				return fmt.Errorf("%s: IPv6 problems %q do not name %s", n.Host.Name, st.IPAM6.Problems, name)
			}
		}
		return nil
	})
}

// TestDualStackOutboundNAT: a pod's IPv6 traffic to a host outside the
// cluster ranges leaves masqueraded to its node's IPv6 address (NAT66), as
// its IPv4 traffic does to the node's IPv4 address; unique-local pod
// addresses are not routable outside. The underlay gets unique-local IPv6
// addresses of its own for the test (gossip and WireGuard stay on IPv4).
func TestDualStackOutboundNAT(t *testing.T) {
	tn, nodes, ctx := cniMesh(t, 1, 3*time.Minute, dualFlags...)
	plain := tn.AddHost(t)
	node6, plain6 := netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::9")
	for _, x := range []struct {
		h *testnet.Host
		a netip.Addr
	}{{nodes[0].Host, node6}, {plain, plain6}} {
		if out, err := x.h.Run(ctx, "ip", "-6", "addr", "add", x.a.String()+"/64", "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("ip -6 addr add on %s: %v\n%s", x.h.Name, err, out)
		}
	}
	p, err := addDualPod(ctx, t, nodes[0].Host, "nat6")
	if err != nil {
		t.Fatal(err)
	}
	const port = "8080"
	serveWhoami(t, plain, "", netip.AddrPortFrom(plain6, 8080).String())
	serveWhoami(t, plain, "", plain.Addr.String()+":"+port)
	t.Run("ipv6 pod to outside is masqueraded to the node's IPv6 address", func(t *testing.T) {
		expectSource(t, p.Host, p.name, netip.AddrPortFrom(plain6, 8080).String(), "", node6)
	})
	t.Run("ipv4 pod to outside is still masqueraded to the node's IPv4 address", func(t *testing.T) {
		expectSource(t, p.Host, p.name, plain.Addr.String()+":"+port, "", nodes[0].Host.Addr)
	})
}

// TestIPv6OnlyMesh: two hosts with an IPv6 cluster range alone. Pods get
// one IPv6 address each (and a MAC derived from it), reach each other and
// their gateway right after ADD, and cannot send from another address; the
// ring lives in ipam6.json and the status's ipam section is the IPv6 one.
func TestIPv6OnlyMesh(t *testing.T) {
	const range6 = ipv6OnlyRange
	_, nodes, ctx := cniMesh(t, 2, 4*time.Minute, "--ipalloc-range", range6)
	for _, n := range nodes {
		st := n.MustStatus()
		if st.IPAM.Range != range6 || st.IPAM6 != nil || !netip.MustParseAddr(st.OverlayIP).Is6() {
			t.Fatalf("%s: ipam %+v, ipam6 %+v, overlay %q: want the IPv6 ring in ipam", n.Host.Name, st.IPAM, st.IPAM6, st.OverlayIP)
		}
		if out, err := n.Host.Run(ctx, "ls", "/var/lib/mesh"); err != nil || !strings.Contains(out, "ipam6.json") || strings.Contains(out, "ipam.json") {
			t.Errorf("%s: state dir %q (%v), want ipam6.json and no ipam.json", n.Host.Name, out, err)
		}
	}
	var pods []*pod
	for i, n := range nodes {
		p, err := addPod(ctx, t, n.Host, fmt.Sprintf("six%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if !p.ip.Is6() {
			t.Fatalf("pod address %s, want IPv6", p.ip)
		}
		gw := n.MustStatus().OverlayIP
		if out, err := p.exec(ctx, "ping", "-6", "-c", "1", "-W", "2", gw); err != nil {
			t.Fatalf("ping -6 of the gateway %s right after ADD failed: %v\n%s", gw, err, out)
		}
		if mac := linkMAC(ctx, t, n.Host, p, "eth0"); !strings.HasPrefix(mac, "0a:59:") {
			t.Errorf("pod MAC %s, want one derived from the IPv6 address (0a:59:...)", mac)
		}
		pods = append(pods, p)
	}
	for _, pair := range [][2]*pod{{pods[0], pods[1]}, {pods[1], pods[0]}} {
		p := &dualPod{pod: pair[0]}
		if err := p.ping(ctx, pair[1].ip); err != nil {
			t.Error(err)
		}
	}
	// A pod on node 0 forges the other pod's address towards its own
	// gateway's node: only port isolation can stop it there.
	forged := &dualPod{pod: pods[0], ip6: pods[0].ip}
	from, err := udpReceived6(ctx, t, nodes[0].Host, nil, 9995, func() error {
		if err := spoofUDP6(ctx, t, forged, pods[1].ip, netip.MustParseAddr(nodes[0].MustStatus().OverlayIP), 9995, "forged"); err != nil {
			return err
		}
		return spoofUDP6(ctx, t, forged, pods[0].ip, netip.MustParseAddr(nodes[0].MustStatus().OverlayIP), 9995, "control")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(from, " "); strings.Contains(got, "forged") || !strings.Contains(got, "control") {
		t.Errorf("node 0 received %v: want the honest datagrams only", from)
	}
}

// TestDualStackEnableOnRunningMesh: an IPv4-only mesh with pods gets the
// IPv6 range node by node (docs/ipam.md, "Enabling IPv6 on a running
// mesh"): each node is restarted with the flag added while the pods of
// the others keep reaching each other over IPv4; afterwards the IPv6 ring
// is ready everywhere, the old pods keep their IPv4 address (and pass
// CHECK), and new pods get both families and reach each other over IPv6.
func TestDualStackEnableOnRunningMesh(t *testing.T) {
	_, nodes, ctx := cniMesh(t, 3, 5*time.Minute)
	var old []*pod
	for i, n := range nodes {
		p, err := addPod(ctx, t, n.Host, fmt.Sprintf("old%d", i))
		if err != nil {
			t.Fatal(err)
		}
		old = append(old, p)
	}
	pingAll := func(ps []*pod) error {
		for _, a := range ps {
			for _, b := range ps {
				if a != b {
					if err := (&dualPod{pod: a}).ping(ctx, b.ip); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	for i, n := range nodes {
		base := n.Args
		restartWith(t, n, base, "--ipalloc-range", "10.32.0.0/12", "--ipalloc-range", dualRange6)
		n.Args = base // the next restart of this node, if any, starts from the same flags
		testnet.Eventually(t, 90*time.Second, time.Second, func() error {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.IPAM.Status != "ready" || st.IPAM.Allocated != 1 || st.IPAM6 == nil || st.IPAM6.Status != "ready" || st.OverlayIP6 == "" {
				return fmt.Errorf("node %d after adding IPv6: IPv4 %+v, IPv6 %+v", i, st.IPAM, st.IPAM6)
			}
			return nil
		})
		testnet.Eventually(t, 60*time.Second, time.Second, func() error { return pingAll(old) })
	}
	for _, p := range old {
		if out, err := runCNI(ctx, t, p.Host, "check", "mesh", "/run/netns/"+p.name); err != nil {
			t.Errorf("CHECK of %s (wired IPv4-only) after IPv6 was added: %v\n%s", p.name, err, out)
		}
	}
	var fresh []*dualPod
	for i, n := range nodes[:2] {
		p, err := addDualPod(ctx, t, n.Host, fmt.Sprintf("new%d", i))
		if err != nil {
			t.Fatal(err)
		}
		fresh = append(fresh, p)
	}
	testnet.Eventually(t, 60*time.Second, time.Second, func() error {
		if err := fresh[0].ping(ctx, fresh[1].ip6); err != nil {
			return err
		}
		return fresh[1].ping(ctx, fresh[0].ip6)
	})
}

// TestIPv6UnderlayMesh: two hosts whose underlay has IPv6 only (their IPv4
// address removed before the daemons start): gossip and WireGuard run over
// IPv6 (--advertise-addr IPv6, the peer named as [address]:port), and
// dual-stack pods reach each other over both families inside it, and a pod
// reaches the other node's IPv6 address (masqueraded to its own node's).
func TestIPv6UnderlayMesh(t *testing.T) {
	testnet.RequireRoot(t)
	tn := testnet.New(t, testnet.Options{Hosts: 2, Prefix: "u6"})
	hosts := tn.Hosts()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	under := []netip.Addr{netip.MustParseAddr("fd98::1"), netip.MustParseAddr("fd98::2")}
	for i, h := range hosts {
		for _, args := range [][]string{
			{"-6", "addr", "add", under[i].String() + "/64", "dev", "eth0", "nodad"},
			{"-4", "addr", "flush", "dev", "eth0"},
		} {
			if out, err := h.Run(ctx, "ip", args...); err != nil {
				t.Fatalf("ip %v on %s: %v\n%s", args, h.Name, err, out)
			}
		}
	}
	// --no-masquerade: only the rule for the other nodes' addresses
	// translates a pod's traffic to host 2 below.
	flags := append(slices.Clone(dualFlags), "--no-masquerade")
	nodes := []*node{
		launch(t, hosts[0], nil, append(slices.Clone(flags), "--advertise-addr", under[0].String())...),
		launch(t, hosts[1], nil, append(slices.Clone(flags), "--advertise-addr", under[1].String(), netip.AddrPortFrom(under[0], 6783).String())...),
	}
	dumpLogsOnFailure(t, nodes...)
	waitConnected(t, nodes)
	for _, n := range nodes {
		waitCNIInstalled(t, n)
	}
	for _, c := range nodes[0].MustStatus().Connections {
		if ap, err := netip.ParseAddrPort(c.Endpoint); err != nil || ap.Addr() != under[1] {
			t.Errorf("WireGuard endpoint of %s is %q, want %s", c.Peer, c.Endpoint, under[1])
		}
	}
	a, err := addDualPod(ctx, t, hosts[0], "u6a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addDualPod(ctx, t, hosts[1], "u6b")
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{b.ip, b.ip6} {
		if err := a.ping(ctx, dst); err != nil {
			t.Error(err)
		}
	}
	for _, dst := range []netip.Addr{a.ip, a.ip6} {
		if err := b.ping(ctx, dst); err != nil {
			t.Error(err)
		}
	}
	// A pod reaching the other node's own (IPv6 underlay) address is
	// masqueraded: that node would answer its pod address through
	// WireGuard from an address outside every AllowedIPs.
	host1 := netip.AddrPortFrom(under[1], 8080).String()
	serveWhoami(t, hosts[1], "", host1)
	expectSource(t, a.Host, a.name, host1, "", under[0])
}

// TestDualStackRangeMismatch: a node configured with another IPv6 cluster
// range than its peer is named, with both ranges, in the IPv6 problems of
// both and in `mesh status` (the IPv6 ring's states carry their range, and
// each node refuses the other's), while the IPv4 ring is unaffected.
func TestDualStackRangeMismatch(t *testing.T) {
	const other6 = "fd33::/48"
	// Not cniMeshFlags: the second node's IPv6 ring waits for a peer to
	// agree its first split with, which never comes, so it installs no
	// CNI plugin.
	_, nodes := startMeshFlags(t, 2, func(i int) []string {
		if i == 1 {
			return []string{"--ipalloc-range", dualRange4, "--ipalloc-range", other6}
		}
		return dualFlags
	})
	names := []string{nodes[0].MustStatus().Name, nodes[1].MustStatus().Name}
	ranges := []string{dualRange6, other6}
	testnet.Eventually(t, 60*time.Second, time.Second, func() error {
		for i, n := range nodes {
			st := n.MustStatus()
			if st.IPAM6 == nil {
				return fmt.Errorf("%s: no IPv6 IPAM", n.Host.Name)
			}
			o := 1 - i
			if !slices.ContainsFunc(st.IPAM6.Problems, func(p string) bool {
				return strings.Contains(p, names[o]) && strings.Contains(p, ranges[o]) && strings.Contains(p, ranges[i]) && strings.Contains(p, "--ipalloc-range")
			}) {
				return fmt.Errorf("%s: IPv6 problems %q do not name %s with %s and %s", n.Host.Name, st.IPAM6.Problems, names[o], ranges[o], ranges[i])
			}
			if st.IPAM.Status != "ready" || len(st.IPAM.Problems) != 0 {
				return fmt.Errorf("%s: IPv4 IPAM %s with problems %q, want ready without problems", n.Host.Name, st.IPAM.Status, st.IPAM.Problems)
			}
		}
		return nil
	})
	out, err := nodes[0].Host.Run(context.Background(), nodes[0].Bin, "status")
	// The second node named the first at launch: its IPv6 ring waits for
	// the first split that only a peer of its range could agree.
	if st := nodes[1].MustStatus(); st.IPAM6.Status != "waiting" {
		t.Errorf("%s: IPv6 IPAM %s, want waiting", nodes[1].Host.Name, st.IPAM6.Status)
	}
	if want := "peer " + names[1] + " uses cluster range " + other6 + " but this peer uses " + dualRange6; err != nil || !strings.Contains(out, want) {
		t.Fatalf("mesh status does not show the mismatch: %v\n%s", err, out)
	}
}
