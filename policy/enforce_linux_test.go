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
	"slices"
	"sort"
	"strconv"
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
// gateway as a /32 (and the IPv6 gateway as a /128), the pod ranges routed
// to it, pods with a /32 (and a /128) whose default routes go through the
// gateways, so all pod traffic is forwarded by the host.
type testNodeNet struct {
	t    *testing.T
	host *testnet.Host
	pods map[string]*testPod
	n    int
}

type testPod struct {
	name  string // short name used in truth tables
	ns    string // netns path
	addr  netip.Addr
	addr6 netip.Addr // invalid for an IPv4-only pod
}

// The IPv6 gateway and pod range of the test node, the twins of
// 10.32.0.1 and 10.32.0.0/16 (see to6).
const (
	testGateway6 = "fd32::1"
	testRange6   = "fd32::/112"
)

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
	// IPv6 as mesh sets it up: the gateway without duplicate address
	// detection (nor the bridge's link-local address, which the node's
	// neighbour solicitations come from, as it would be after DAD), and
	// no ICMPv6 redirects to pods (port isolation's output chain).
	netnstest.Run(t, h.NetNS(), "sh", "-ec", fmt.Sprintf(`
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
echo 0 > /proc/sys/net/ipv6/conf/mesh/accept_dad
ip -6 addr add %[1]s/128 dev mesh nodad
ip -6 route add %[2]s dev mesh src %[1]s
echo 1 > /proc/sys/net/ipv6/conf/all/forwarding
nft add table inet test-no-redirects
nft add chain inet test-no-redirects output '{ type filter hook output priority filter; }'
nft add rule inet test-no-redirects output oifname mesh icmpv6 type nd-redirect drop
`, testGateway6, testRange6))
	return n
}

// to6 maps an IPv4 address or prefix of 10.32.0.0/16 to its IPv6 twin in
// fd32::/112: the low 16 bits kept, a prefix 96 bits longer (10.32.0.11
// is fd32::b, 10.32.0.20/30 is fd32::14/126), so a truth table holds for
// both families. The prefix length is carried over unchecked: a bad one
// stays bad.
func to6(s string) string {
	a, bits, isPrefix := strings.Cut(s, "/")
	v4 := netip.MustParseAddr(a).As4()
	v6 := netip.MustParsePrefix(testRange6).Addr().As16()
	v6[14], v6[15] = v4[2], v4[3]
	out := netip.AddrFrom16(v6).String()
	if isPrefix {
		n, err := strconv.Atoi(bits)
		if err != nil {
			panic(err)
		}
		out += "/" + strconv.Itoa(n+96)
	}
	return out
}

// addPod makes a pod netns named name with address addr (and addr6, if
// given), listening on tcpPorts and udpPorts on each. Its bridge port is
// in hairpin mode, as mesh-cni sets it.
func (n *testNodeNet) addPod(name, addr string, addr6 ...string) *testPod {
	t := n.t
	n.n++
	p := &testPod{name: name, ns: netnstest.New(t), addr: netip.MustParseAddr(addr)}
	port := fmt.Sprintf("vp%d", n.n)
	// As mesh-cni gives it: no DAD wait (the pod end is made in the pod's
	// netns, with its defaults).
	netnstest.Run(t, p.ns, "sh", "-ec", "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad")
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
	nets := []string{"4"}
	if len(addr6) > 0 {
		p.addr6 = netip.MustParseAddr(addr6[0])
		netnstest.Run(t, p.ns, "sh", "-ec", fmt.Sprintf(`
ip -6 addr add %s/128 dev eth0 nodad
ip -6 route add %[2]s dev eth0
ip -6 route add default via %[2]s dev eth0
`, p.addr6, testGateway6))
		nets = append(nets, "6")
	}
	for _, fam := range nets {
		p.listen(t, fam)
	}
	n.pods[name] = p
	return p
}

// listen serves tcpPorts and udpPorts on the pod's addresses of family
// fam ("4" or "6").
func (p *testPod) listen(t *testing.T, fam string) {
	for _, port := range tcpPorts {
		var l net.Listener
		if err := netnstest.Do(p.ns, func() (err error) { l, err = net.Listen("tcp"+fam, fmt.Sprintf(":%d", port)); return err }); err != nil {
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
		if err := netnstest.Do(p.ns, func() (err error) { c, err = net.ListenPacket("udp"+fam, fmt.Sprintf(":%d", port)); return err }); err != nil {
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
}

// warmUp waits until every pod of n reaches every other on TCP port 80
// over each family both have, before any policy: the first IPv6 packets
// wait for neighbour discovery (of the gateway by the pod, of the peer by
// the node), which on a loaded machine can outlast probeTimeout; so a
// truth table's probes do not depend on it.
func (n *testNodeNet) warmUp() {
	n.t.Helper()
	var probes []probeSpec
	for _, s := range n.pods {
		for _, d := range n.pods {
			if s == d {
				continue
			}
			probes = append(probes, probeSpec{s.name, d.name, "tcp", 80})
			if s.addr6.IsValid() && d.addr6.IsValid() {
				probes = append(probes, probeSpec{s.name, d.name, "tcp6", 80})
			}
		}
	}
	testnet.Eventually(n.t, 20*time.Second, 100*time.Millisecond, func() error {
		got, err := n.runProbes(probes)
		if err != nil {
			return err
		}
		for _, p := range probes {
			if !got[p] {
				return fmt.Errorf("%s fails without any policy", p)
			}
		}
		return nil
	})
}

// probe reports whether src reaches dst on proto/port and gets the answer
// back: proto "tcp" or "udp" over IPv4, "tcp6" or "udp6" over IPv6.
func probe(src, dst *testPod, proto string, port int) (bool, error) {
	network, addr := proto+"4", dst.addr
	if strings.HasSuffix(proto, "6") {
		network, addr = proto, dst.addr6
	}
	if !addr.IsValid() {
		return false, fmt.Errorf("%s has no address for %s", dst.name, proto)
	}
	ok := false
	err := netnstest.Do(src.ns, func() error {
		d := net.Dialer{Timeout: probeTimeout}
		c, err := d.Dial(network, netip.AddrPortFrom(addr, uint16(port)).String())
		if err != nil {
			if ne, isNet := err.(net.Error); isNet && ne.Timeout() {
				return nil
			}
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(probeTimeout))
		if strings.HasPrefix(proto, "udp") {
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

// dualEnforceObjects is enforceObjects with dual-stack pods: each has the
// IPv6 twin (to6) of its address too.
func dualEnforceObjects() []runtime.Object {
	objs := []runtime.Object{mkNS("a", "team=x"), mkNS("b", "team=y")}
	for _, p := range enforcePods {
		if p.ns != "" {
			objs = append(objs, mkPod(p.ns, p.name, testNode, p.addr+","+to6(p.addr), p.labels, "http:TCP:8080"))
		}
	}
	return objs
}

// addDualPods adds enforcePods to n with both addresses.
func (n *testNodeNet) addDualPods() {
	for _, p := range enforcePods {
		n.addPod(p.name, p.addr, to6(p.addr))
	}
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
	// want4, if set, replaces want for the IPv4 probes of a dual-stack
	// run (TestEnforcementIPv6).
	want4 func(src, dst string) bool
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
		{name: "egress-named-port", proto: "tcp", port: 8080, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "db-to-web-http", "app=db", "Egress", nil, []egress{{To: peers{podPeer("app=web")}, Ports: ports{portName("TCP", "http")}}})},
			want:  func(s, d string) bool { return s != "a2" || d == "a1" },
			extra: map[probeSpec]bool{{"a2", "a1", "tcp", 80}: false}},
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
	applied := runTruthTable(t, n, client, c, truthCases(), []string{""})

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

// runTruthTable applies each case's policies in turn (deleting the
// previous case's) and probes every pair of n's pods in each family of fams
// ("" for IPv4, "6" for IPv6: the suffix of the probe's protocol). It
// returns the policies of the last case, still applied.
func runTruthTable(t *testing.T, n *testNodeNet, client *fake.Clientset, c *Controller, cases []truthCase, fams []string) []*networkingv1.NetworkPolicy {
	ctx := context.Background()
	var names []string
	for name := range n.pods {
		names = append(names, name)
	}
	sort.Strings(names)

	var applied []*networkingv1.NetworkPolicy
	for _, tc := range cases {
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
			for _, fam := range fams {
				wantFam := tc.want
				if fam == "" && tc.want4 != nil {
					wantFam = tc.want4
				}
				for _, s := range names {
					for _, d := range names {
						if s != d {
							want[probeSpec{s, d, tc.proto + fam, tc.port}] = wantFam(s, d)
						}
					}
				}
				for p, ok := range tc.extra {
					p.proto += fam
					want[p] = ok
				}
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
	return applied
}

// dualStackCase is tc for dual-stack pods: each ipBlock peer also has its
// IPv6 twin (to6), so the IPv6 truth table is the IPv4 one.
func dualStackCase(tc truthCase) truthCase {
	tc.policies = slices.Clone(tc.policies)
	for i, np := range tc.policies {
		np = np.DeepCopy()
		for j := range np.Spec.Ingress {
			np.Spec.Ingress[j].From = withIPv6Blocks(np.Spec.Ingress[j].From)
		}
		for j := range np.Spec.Egress {
			np.Spec.Egress[j].To = withIPv6Blocks(np.Spec.Egress[j].To)
		}
		tc.policies[i] = np
	}
	return tc
}

func withIPv6Blocks(ps peers) peers {
	var out peers
	for _, p := range ps {
		out = append(out, p)
		if p.IPBlock != nil {
			var except []string
			for _, e := range p.IPBlock.Except {
				except = append(except, to6(e))
			}
			out = append(out, blockPeer(to6(p.IPBlock.CIDR), except...))
		}
	}
	return out
}

// TestEnforcementIPv6 is the truth table of TestEnforcement with
// dual-stack pods, probed over IPv6 and IPv4: selectors select the pods'
// addresses of both families, each ipBlock has its IPv6 twin beside it.
// ipBlocks of one family allow nothing of the other.
func TestEnforcementIPv6(t *testing.T) {
	n := newTestNodeNet(t)
	n.addDualPods()
	n.warmUp()
	client := fake.NewClientset(dualEnforceObjects()...)
	c := startController(t, client, nftIn(t, n.host.NetNS()))
	var cases []truthCase
	for _, tc := range truthCases() {
		cases = append(cases, dualStackCase(tc))
	}
	ipblockOnly6 := func(s, d string) bool { return d != "a1" || s == "a2" || s == "x2" }
	cases = append(cases,
		truthCase{name: "ipblock-ipv6-only", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-from-block6", "app=web", "Ingress", []ingress{{From: peers{blockPeer(to6("10.32.0.0/24"), to6("10.32.0.101/32"), to6("10.32.0.20/30"))}}}, nil)},
			want:  ipblockOnly6,
			want4: func(s, d string) bool { return d != "a1" }},
		truthCase{name: "egress-ipblock-ipv4-only", proto: "tcp", port: 80, policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "db-out4", "app=db", "Egress", nil, []egress{{To: peers{blockPeer("10.32.0.0/24", "10.32.0.16/28")}}})},
			want:  func(s, d string) bool { return s != "a2" },
			want4: func(s, d string) bool { return s != "a2" || !strings.HasPrefix(d, "b") }},
	)
	runTruthTable(t, n, client, c, cases, []string{"6", ""})
}

// TestNDPUnderDefaultDeny: a namespace denying all ingress and egress does
// not break IPv6 neighbour discovery, with every neighbour cache flushed
// first: a pod allowed out reaches its peer (it resolves its gateway, the
// node resolves the peer), the node reaches a pod whose egress is denied
// (the pod's neighbour advertisements pass), a denied pod still resolves
// its gateway, and what the policies deny stays denied.
func TestNDPUnderDefaultDeny(t *testing.T) {
	n := newTestNodeNet(t)
	var objs []runtime.Object
	objs = append(objs, mkNS("a", "team=x"), mkNS("b", "team=y"))
	for _, p := range enforcePods[:3] { // a1, a2, b1
		n.addPod(p.name, p.addr, to6(p.addr))
		objs = append(objs, mkPod(p.ns, p.name, testNode, p.addr+","+to6(p.addr), p.labels))
	}
	pols := []*networkingv1.NetworkPolicy{
		mkPolicy("a", "deny", "", "Ingress,Egress", nil, nil),
		mkPolicy("a", "web-to-client", "app=web", "Egress", nil, []egress{{To: peers{bothPeer("team=y", "app=client")}}}),
	}
	for _, np := range pols {
		objs = append(objs, np)
	}
	c := startController(t, fake.NewClientset(objs...), nftIn(t, n.host.NetNS()))
	waitPolicies(t, c, pols)

	a1, a2, b1 := n.pods["a1"], n.pods["a2"], n.pods["b1"]
	flush := func() {
		netnstest.Run(t, n.host.NetNS(), "ip", "-6", "neigh", "flush", "dev", "mesh")
		for _, p := range []*testPod{a1, a2, b1} {
			netnstest.Run(t, p.ns, "ip", "-6", "neigh", "flush", "dev", "eth0")
		}
	}
	ping := func(ns string, to netip.Addr) error {
		_, err := netnstest.Exec(ns, "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", to.String())
		return err
	}
	flush()
	if err := ping(a1.ns, b1.addr6); err != nil {
		t.Errorf("a1 cannot ping b1 over IPv6 although its egress policy allows it (%v): neighbour discovery blocked?\n%s", err, n.listTable())
	}
	flush()
	if err := ping(n.host.NetNS(), a2.addr6); err != nil {
		t.Errorf("the node cannot ping a2 over IPv6 (%v): a2's neighbour advertisements blocked by its egress policy?\n%s", err, n.listTable())
	}
	flush()
	if err := ping(a2.ns, b1.addr6); err == nil {
		t.Errorf("a2 pinged b1 over IPv6 although its egress is denied")
	}
	if out := netnstest.Run(t, a2.ns, "ip", "-6", "neigh", "show", testGateway6, "dev", "eth0"); !strings.Contains(out, "lladdr") {
		t.Errorf("a2 did not resolve its gateway under default deny: %q", out)
	}
	if err := ping(b1.ns, a1.addr6); err == nil {
		t.Errorf("b1 pinged a1 over IPv6 although a1's ingress is denied")
	}
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
// same Service is still denied. Both families: the pods are dual-stack,
// the Service has an address of each.
func TestHairpinNotJudgedByOwnPolicy(t *testing.T) {
	n := newTestNodeNet(t)
	n.addDualPods()
	a1, b1 := n.pods["a1"], n.pods["b1"]
	svc := &testPod{name: "svc", addr: netip.MustParseAddr("198.51.100.10"), addr6: netip.MustParseAddr("2001:db8::10")}
	script := filepath.Join(t.TempDir(), "svc.nft")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(`table ip svc {
	chain pre { type nat hook prerouting priority dstnat; ip daddr %[1]s tcp dport 80 dnat to %[2]s:80; }
	chain post { type nat hook postrouting priority srcnat; ip saddr %[2]s ip daddr %[2]s masquerade; }
}
table ip6 svc {
	chain pre { type nat hook prerouting priority dstnat; ip6 daddr %[3]s tcp dport 80 dnat to [%[4]s]:80; }
	chain post { type nat hook postrouting priority srcnat; ip6 saddr %[4]s ip6 daddr %[4]s masquerade; }
}
`, svc.addr, a1.addr, svc.addr6, a1.addr6)), 0o600); err != nil {
		t.Fatal(err)
	}
	netnstest.Run(t, n.host.NetNS(), "nft", "-f", script)
	protos := []string{"tcp", "tcp6"}
	// Without any policy the emulated Service works: the case is sound.
	testnet.Eventually(t, 10*time.Second, 200*time.Millisecond, func() error {
		for _, proto := range protos {
			if ok, err := probe(a1, svc, proto, 80); err != nil || !ok {
				return fmt.Errorf("a1 cannot reach itself through the Service over %s without any policy (err %v)", proto, err)
			}
		}
		return nil
	})
	client := fake.NewClientset(append(dualEnforceObjects(), mkPolicy("a", "deny-ingress", "", "Ingress", nil, nil))...)
	startController(t, client, nftIn(t, n.host.NetNS()))

	for _, proto := range protos {
		testnet.Eventually(t, 20*time.Second, 200*time.Millisecond, func() error {
			if ok, err := probe(a1, svc, proto, 80); err != nil || !ok {
				return fmt.Errorf("a1 cannot reach itself through the Service over %s (err %v)", proto, err)
			}
			return nil
		})
		if ok, err := probe(b1, svc, proto, 80); err != nil || ok {
			t.Fatalf("b1 reached a1 through the Service over %s although a1's namespace denies ingress (err %v)", proto, err)
		}
		if ok, err := probe(b1, a1, proto, 80); err != nil || ok {
			t.Fatalf("b1 reached a1 directly over %s although a1's namespace denies ingress (err %v)", proto, err)
		}
	}
}
