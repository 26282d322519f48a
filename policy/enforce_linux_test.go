package policy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	"github.com/meshnet/mesh/kube/kubetest"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// Ports every test pod listens on.
var (
	tcpPorts = []int{80, 8080, 8500, 9500}
	udpPorts = []int{53}
)

// probeTimeout is how long a probe waits for an answer: on one bridge an
// allowed one takes well under a millisecond.
const probeTimeout = 500 * time.Millisecond

// testNodeNet is a node as mesh wires it: a bridge "mesh" holding the
// gateway as a /32, the pod range routed to it, pods with a /32 whose
// default route goes through the gateway, so all pod traffic is forwarded
// by the host.
type testNodeNet struct {
	t    *testing.T
	host *testnet.Host
	pods map[string]*testPod
	n    int
}

type testPod struct {
	name string // short name used in truth tables
	ns   string // netns path
	addr netip.Addr
}

func newTestNodeNet(t *testing.T) *testNodeNet {
	testnet.RequireRoot(t)
	tn := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "policy"})
	h := tn.Hosts()[0]
	n := &testNodeNet{t: t, host: h, pods: map[string]*testPod{}}
	netnstest.Run(t, h.NetNS(), "sh", "-ec", `
ip link add mesh type bridge
ip addr add 10.32.0.1/32 dev mesh
ip link set mesh up
ip route add 10.32.0.0/24 dev mesh src 10.32.0.1
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects
echo 0 > /proc/sys/net/ipv4/conf/mesh/send_redirects
`)
	return n
}

// addPod makes a pod netns named name with address addr, listening on
// tcpPorts and udpPorts. Its bridge port is in hairpin mode, as mesh-cni
// sets it.
func (n *testNodeNet) addPod(name, addr string) *testPod {
	t := n.t
	n.n++
	p := &testPod{name: name, ns: netnstest.New(t), addr: netip.MustParseAddr(addr)}
	port := fmt.Sprintf("vp%d", n.n)
	netnstest.Run(t, n.host.NetNS(), "sh", "-ec", fmt.Sprintf(`
ip link add %[1]s type veth peer name eth0 netns %[2]s
ip link set %[1]s master mesh up
ip link set %[1]s type bridge_slave hairpin on
`, port, p.ns))
	netnstest.Run(t, p.ns, "sh", "-ec", fmt.Sprintf(`
ip addr add %s/32 dev eth0
ip link set eth0 up
ip route add 10.32.0.1 dev eth0 scope link
ip route add default via 10.32.0.1 dev eth0
`, addr))
	for _, port := range tcpPorts {
		var l net.Listener
		if err := netnstest.Do(p.ns, func() (err error) { l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("ok"))
				c.Close()
			}
		}()
	}
	for _, port := range udpPorts {
		var c net.PacketConn
		if err := netnstest.Do(p.ns, func() (err error) { c, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				k, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				c.WriteTo(buf[:k], from)
			}
		}()
	}
	n.pods[name] = p
	return p
}

// probe reports whether src reaches dst on proto/port and gets the answer
// back.
func probe(src, dst *testPod, proto string, port int) (bool, error) {
	ok := false
	err := netnstest.Do(src.ns, func() error {
		d := net.Dialer{Timeout: probeTimeout}
		c, err := d.Dial(proto+"4", netip.AddrPortFrom(dst.addr, uint16(port)).String())
		if err != nil {
			if ne, isNet := err.(net.Error); isNet && ne.Timeout() {
				return nil
			}
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(probeTimeout))
		if proto == "udp" {
			if _, err := c.Write([]byte("ok")); err != nil {
				return nil
			}
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err == nil && string(buf) == "ok" {
			ok = true
		}
		return nil
	})
	return ok, err
}

type probeSpec struct {
	src, dst string
	proto    string
	port     int
}

func (p probeSpec) String() string { return fmt.Sprintf("%s>%s %s/%d", p.src, p.dst, p.proto, p.port) }

// runProbes runs probes concurrently and returns those that got through.
func (n *testNodeNet) runProbes(probes []probeSpec) (map[probeSpec]bool, error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	got := map[probeSpec]bool{}
	var errs []error
	for _, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := probe(n.pods[p.src], n.pods[p.dst], p.proto, p.port)
			mu.Lock()
			defer mu.Unlock()
			got[p] = ok
			if err != nil {
				errs = append(errs, fmt.Errorf("probe %s: %w", p, err))
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return got, nil
}

var counterRE = regexp.MustCompile(`packets \d+ bytes \d+`)

// listTable is `nft list table` in the node, counter values zeroed.
func (n *testNodeNet) listTable() string {
	out := netnstest.Run(n.t, n.host.NetNS(), "nft", "list", "table", "inet", TableName)
	return counterRE.ReplaceAllString(out, "packets 0 bytes 0")
}

// The cluster of the enforcement tests: namespace a (team=x) and b (team=y)
// with two pods each on this node, and x1, x2: hosts on the bridge that are
// no pods (outside the cluster, for ipBlocks).
var enforcePods = []struct{ name, ns, labels, addr string }{
	{"a1", "a", "app=web", "10.32.0.11"},
	{"a2", "a", "app=db", "10.32.0.12"},
	{"b1", "b", "app=client", "10.32.0.21"},
	{"b2", "b", "app=other", "10.32.0.22"},
	{"x1", "", "", "10.32.0.101"},
	{"x2", "", "", "10.32.0.102"},
}

func enforceObjects() []runtime.Object {
	objs := []runtime.Object{mkNS("a", "team=x"), mkNS("b", "team=y")}
	for _, p := range enforcePods {
		if p.ns != "" {
			objs = append(objs, mkPod(p.ns, p.name, testNode, p.addr, p.labels, "http:TCP:8080"))
		}
	}
	return objs
}

func inA(name string) bool { return strings.HasPrefix(name, "a") }

type truthCase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	// proto/port probed between every pair, want says which pairs pass.
	proto string
	port  int
	want  func(src, dst string) bool
	// extra probes and whether they pass.
	extra map[probeSpec]bool
}

func truthCases() []truthCase {
	deny := mkPolicy("a", "deny", "", "Ingress", nil, nil)
	all := func(string, string) bool { return true }
	return []truthCase{
		{name: "no-policy", proto: "tcp", port: 80, want: all},
		{name: "default-deny-ingress", policies: []*networkingv1.NetworkPolicy{deny}, proto: "tcp", port: 80,
			want: func(s, d string) bool { return !inA(d) }},
		{name: "allow-from-namespace", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{deny,
			mkPolicy("a", "web-from-y", "app=web", "Ingress", []ingress{{From: peers{nsPeer("team=y")}}}, nil)},
			want: func(s, d string) bool { return !inA(d) || d == "a1" && (s == "b1" || s == "b2") }},
		{name: "allow-from-pod", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{deny,
			mkPolicy("a", "web-from-db", "app=web", "Ingress", []ingress{{From: peers{podPeer("app=db")}}}, nil)},
			want: func(s, d string) bool { return !inA(d) || s == "a2" && d == "a1" }},
		{name: "namespace-and-pod", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{deny,
			mkPolicy("a", "web-from-y-client", "app=web", "Ingress", []ingress{{From: peers{bothPeer("team=y", "app=client")}}}, nil)},
			want: func(s, d string) bool { return !inA(d) || s == "b1" && d == "a1" }},
		{name: "ipblock-except", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-from-block", "app=web", "Ingress", []ingress{{From: peers{blockPeer("10.32.0.0/24", "10.32.0.101/32", "10.32.0.20/30")}}}, nil)},
			want: func(s, d string) bool { return d != "a1" || s == "a2" || s == "x2" }},
		{name: "named-port", proto: "tcp", port: 8080, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-http", "app=web", "Ingress", []ingress{{Ports: ports{portName("TCP", "http")}}}, nil)},
			want:  all,
			extra: map[probeSpec]bool{{"b1", "a1", "tcp", 80}: false, {"a2", "a1", "tcp", 80}: false, {"a1", "a2", "tcp", 80}: true}},
		{name: "port-range", proto: "tcp", port: 8500, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-range", "app=web", "Ingress", []ingress{{Ports: ports{portRange("TCP", 8000, 8600)}}}, nil)},
			want:  all,
			extra: map[probeSpec]bool{{"b1", "a1", "tcp", 8080}: true, {"b1", "a1", "tcp", 80}: false, {"b1", "a1", "tcp", 9500}: false, {"b1", "a1", "udp", 53}: false}},
		{name: "egress-ipblock-except", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "db-out", "app=db", "Egress", nil, []egress{{To: peers{blockPeer("10.32.0.0/24", "10.32.0.16/28")}}})},
			want: func(s, d string) bool { return s != "a2" || !strings.HasPrefix(d, "b") }},
		{name: "udp", proto: "udp", port: 53, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-dns", "app=web", "Ingress", []ingress{{From: peers{podPeer("app=db")}, Ports: ports{port("UDP", 53)}}}, nil)},
			want:  func(s, d string) bool { return d != "a1" || s == "a2" },
			extra: map[probeSpec]bool{{"a2", "a1", "tcp", 53}: false, {"a2", "a1", "tcp", 80}: false}},
		{name: "replies-pass", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-no-egress", "app=web", "Egress", nil, nil)},
			// a1 may not open connections, but answers those made to it.
			want: func(s, d string) bool { return s != "a1" }},
		{name: "bad-ipblock-fails-closed", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-bad", "app=web", "Ingress", []ingress{{From: peers{blockPeer("10.32.0.0/240")}}}, nil)},
			want: func(s, d string) bool { return d != "a1" }},
	}
}

func TestEnforcement(t *testing.T) {
	n := newTestNodeNet(t)
	for _, p := range enforcePods {
		n.addPod(p.name, p.addr)
	}
	client := fake.NewClientset(enforceObjects()...)
	c := startController(t, client, nftIn(t, n.host.NetNS()))
	ctx := context.Background()
	var names []string
	for name := range n.pods {
		names = append(names, name)
	}
	sort.Strings(names)

	var applied []*networkingv1.NetworkPolicy
	for _, tc := range truthCases() {
		t.Run(tc.name, func(t *testing.T) {
			for _, np := range applied {
				if err := client.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			applied = nil
			for _, np := range tc.policies {
				if _, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
				applied = append(applied, np)
			}
			waitPolicies(t, c, tc.policies)

			want := map[probeSpec]bool{}
			for _, s := range names {
				for _, d := range names {
					if s != d {
						want[probeSpec{s, d, tc.proto, tc.port}] = tc.want(s, d)
					}
				}
			}
			for p, ok := range tc.extra {
				want[p] = ok
			}
			var probes []probeSpec
			for p := range want {
				probes = append(probes, p)
			}
			got, err := n.runProbes(probes)
			if err != nil {
				t.Fatal(err)
			}
			var bad []string
			table := map[bool][]string{}
			for _, p := range probes {
				table[got[p]] = append(table[got[p]], p.String())
				if got[p] != want[p] {
					bad = append(bad, fmt.Sprintf("%s: got allowed=%v, want %v", p, got[p], want[p]))
				}
			}
			sort.Strings(bad)
			sort.Strings(table[true])
			sort.Strings(table[false])
			t.Logf("denied: %s", strings.Join(table[false], ", "))
			if len(bad) > 0 {
				t.Errorf("truth table differs:\n%s\ntable:\n%s", strings.Join(bad, "\n"), n.listTable())
			}
		})
	}

	t.Run("counters", func(t *testing.T) {
		// The last case denied every pod's TCP to a1 with one policy.
		st, err := c.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Policies["a/web-bad"] == 0 {
			t.Errorf("no denied packets counted for a/web-bad: %+v", st)
		}
		t.Logf("stats: %+v", st)
	})

	t.Run("sctp", func(t *testing.T) {
		// This kernel may have no SCTP sockets to probe with, but the
		// SCTP match must still be accepted by nftables and listed in our
		// table; the golden files check the translation itself.
		for _, np := range applied {
			if err := client.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		np := mkPolicy("a", "web-sctp", "app=web", "Ingress", []ingress{{Ports: ports{port("SCTP", 9899)}}}, nil)
		if _, err := client.NetworkingV1().NetworkPolicies("a").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		applied = []*networkingv1.NetworkPolicy{np}
		testnet.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
			table := n.listTable()
			if !strings.Contains(table, "sctp") || !strings.Contains(table, "9899") {
				return fmt.Errorf("no SCTP port 9899 match in the live table:\n%s", table)
			}
			return nil
		})
	})
}

// waitPolicies waits until the controller applied exactly the policies of
// pols that select local pods.
func waitPolicies(t *testing.T, c *Controller, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	var want []string
	for _, p := range pols {
		want = append(want, p.Namespace+"/"+p.Name)
	}
	sort.Strings(want)
	testnet.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		var got []string
		for _, p := range c.Status() {
			got = append(got, p.Namespace+"/"+p.Name)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("applied policies %v, want %v", got, want)
		}
		return nil
	})
}

func TestRestartRebuildsTable(t *testing.T) {
	n := newTestNodeNet(t)
	objs := append(enforceObjects(),
		mkPolicy("a", "deny", "", "Ingress,Egress", nil, nil),
		mkPolicy("a", "web-from-y", "app=web", "Ingress", []ingress{{From: peers{nsPeer("team=y"), blockPeer("10.32.0.0/24", "10.32.0.101/32")}, Ports: ports{portName("TCP", "http"), portRange("UDP", 50, 60)}}}, nil),
		mkPolicy("b", "client-out", "app=client", "Egress", nil, []egress{{To: peers{podPeer("app=other")}, Ports: ports{port("TCP", 80)}}, {To: peers{nsPeer("team=x")}, Ports: ports{portName("TCP", "http")}}}),
	)
	client := fake.NewClientset(objs...)

	nft := nftIn(t, n.host.NetNS())
	ctx, cancel := context.WithCancel(context.Background())
	c1 := New(kubetest.Client(client), testNode, testLogger(t), nft)
	done := make(chan error, 1)
	go func() { done <- c1.Run(ctx) }()
	<-c1.Ready()
	first := n.listTable()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The table outlives the controller; mess it up, a new one rebuilds it.
	// The same applier: a new Run must not trust what it programmed before.
	netnstest.Run(t, n.host.NetNS(), "nft", "flush", "chain", "inet", TableName, c1.applied.Chains[0].Name)
	startController(t, client, nft)
	if got := n.listTable(); got != first {
		t.Errorf("table after restart differs:\n%s\nbefore:\n%s", got, first)
	}
	golden(t, "live-restart", first)

	// Removal is the applier's (mesh reset, --no-policy), idempotent.
	if err := nft.Remove(); err != nil {
		t.Fatal(err)
	}
	if out, err := netnstest.Exec(n.host.NetNS(), "nft", "list", "table", "inet", TableName); err == nil {
		t.Errorf("table still there after Remove:\n%s", out)
	}
	if err := nft.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// TestTableRestoredAfterFlush: `nft flush ruleset` (a reload of the host's
// nftables service) deletes the table; a connection the policy denies must
// be denied again within a bounded time, and the restore counted.
func TestTableRestoredAfterFlush(t *testing.T) {
	n := newTestNodeNet(t)
	for _, p := range enforcePods[:3] {
		n.addPod(p.name, p.addr)
	}
	objs := append(enforceObjects(), mkPolicy("a", "deny", "", "Ingress", nil, nil))
	client := fake.NewClientset(objs...)
	nft := nftIn(t, n.host.NetNS())
	c := New(kubetest.Client(client), testNode, testLogger(t), nft)
	c.CheckInterval = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-c.Ready()
	denied := probeSpec{"b1", "a1", "tcp", 80}
	if got, err := n.runProbes([]probeSpec{denied}); err != nil || got[denied] {
		t.Fatalf("%s allowed before the flush (%v)", denied, err)
	}
	netnstest.Run(t, n.host.NetNS(), "nft", "flush", "ruleset")
	if got, err := n.runProbes([]probeSpec{denied}); err != nil || !got[denied] {
		t.Fatalf("%s still denied right after the flush (%v): the test shows nothing", denied, err)
	}
	// Restored within a few check intervals.
	start := time.Now()
	testnet.Eventually(t, 15*time.Second, 200*time.Millisecond, func() error {
		got, err := n.runProbes([]probeSpec{denied})
		if err != nil {
			return err
		}
		if got[denied] {
			return fmt.Errorf("%s allowed %v after the flush", denied, time.Since(start).Round(time.Millisecond))
		}
		return nil
	})
	if c.Restores() < 1 {
		t.Errorf("restore not counted: %d", c.Restores())
	}
	t.Logf("denied again after %v", time.Since(start).Round(time.Millisecond))
}

// TestHairpinNotJudgedByOwnPolicy: a pod reaches itself through a Service
// (emulated as kube-proxy does it: DNAT to the pod, masquerade of the
// hairpin) although its namespace denies all ingress: a pod is never judged
// by its own policies for traffic to itself. Another pod going through the
// same Service is still denied.
func TestHairpinNotJudgedByOwnPolicy(t *testing.T) {
	n := newTestNodeNet(t)
	for _, p := range enforcePods {
		n.addPod(p.name, p.addr)
	}
	a1, b1 := n.pods["a1"], n.pods["b1"]
	svc := &testPod{name: "svc", addr: netip.MustParseAddr("198.51.100.10")}
	script := filepath.Join(t.TempDir(), "svc.nft")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`table ip svc {
	chain pre { type nat hook prerouting priority dstnat; ip daddr %[1]s tcp dport 80 dnat to %[2]s:80; }
	chain post { type nat hook postrouting priority srcnat; ip saddr %[2]s ip daddr %[2]s masquerade; }
}
`, svc.addr, a1.addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	netnstest.Run(t, n.host.NetNS(), "nft", "-f", script)
	// Without any policy the emulated Service works: the case is sound.
	testnet.Eventually(t, 10*time.Second, 200*time.Millisecond, func() error {
		if ok, err := probe(a1, svc, "tcp", 80); err != nil || !ok {
			return fmt.Errorf("a1 cannot reach itself through the Service without any policy (err %v)", err)
		}
		return nil
	})
	client := fake.NewClientset(append(enforceObjects(), mkPolicy("a", "deny-ingress", "", "Ingress", nil, nil))...)
	startController(t, client, nftIn(t, n.host.NetNS()))

	testnet.Eventually(t, 20*time.Second, 200*time.Millisecond, func() error {
		if ok, err := probe(a1, svc, "tcp", 80); err != nil || !ok {
			return fmt.Errorf("a1 cannot reach itself through the Service (err %v)", err)
		}
		return nil
	})
	if ok, err := probe(b1, svc, "tcp", 80); err != nil || ok {
		t.Fatalf("b1 reached a1 through the Service although a1's namespace denies ingress (err %v)", err)
	}
	if ok, err := probe(b1, a1, "tcp", 80); err != nil || ok {
		t.Fatalf("b1 reached a1 directly although a1's namespace denies ingress (err %v)", err)
	}
}
