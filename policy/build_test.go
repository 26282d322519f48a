package policy

import (
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/nftables"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name.golden, or writes it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (run with -update to accept):\n%s", name, path, got)
	}
}

// basePods: three namespaces' pods on this node and one elsewhere.
func basePods() []*corev1.Pod {
	return []*corev1.Pod{
		mkPod("a", "web", testNode, "10.32.0.2", "app=web", "http:TCP:8080", "dns:UDP:5353"),
		mkPod("a", "db", testNode, "10.32.0.3", "app=db", "sql:TCP:5432"),
		mkPod("b", "client", testNode, "10.32.0.4", "app=client"),
		mkPod("b", "other", testNode, "10.32.0.5", "app=other"),
		mkPod("c", "remote", "node2", "10.32.1.2", "app=client", "http:TCP:9090"),
	}
}

func baseNS() []*corev1.Namespace {
	return []*corev1.Namespace{mkNS("a", "team=x"), mkNS("b", "team=y"), mkNS("c", "team=y")}
}

func TestBuildGolden(t *testing.T) {
	hostNet := mkPod("a", "hostnet", testNode, "192.0.2.1", "app=web")
	hostNet.Spec.HostNetwork = true
	done := mkPod("a", "done", testNode, "10.32.0.9", "app=web")
	done.Status.Phase = corev1.PodSucceeded
	badProto := port("ICMP", 1)
	v6 := blockPeer("2001:db8::/32")
	tests := []struct {
		name     string
		pods     []*corev1.Pod
		policies []*networkingv1.NetworkPolicy
	}{
		{name: "no-policies"},
		{name: "default-deny-ingress", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "deny", "", "Ingress", nil, nil)}},
		{name: "default-deny-egress", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "deny", "", "Egress", nil, nil)}},
		{name: "allow-from-namespace", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "from-y", "app=web", "", []ingress{{From: peers{nsPeer("team=y")}}}, nil)}},
		{name: "allow-from-pod", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "from-db", "app=web", "Ingress", []ingress{{From: peers{podPeer("app=db")}}}, nil)}},
		{name: "namespace-and-pod", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "from-y-clients", "app=web", "Ingress", []ingress{{From: peers{bothPeer("team=y", "app=client")}}}, nil)}},
		{name: "ipblock-except", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "block", "app=web", "Ingress", []ingress{{From: peers{blockPeer("10.32.0.0/16", "10.32.0.4/31", "10.32.1.0/24")}}}, nil)}},
		{name: "named-port", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "http", "", "Ingress", []ingress{{Ports: ports{portName("TCP", "http"), portName("UDP", "dns"), portName("TCP", "sql")}}}, nil)}},
		{name: "port-range-udp-sctp", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "ports", "app=web", "Ingress", []ingress{{From: peers{nsPeer("")}, Ports: ports{portRange("TCP", 8000, 8100), port("UDP", 53), port("SCTP", 9), {}}}}, nil)}},
		{name: "egress-ipblock-except", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "out", "app=db", "Egress", nil, []egress{{To: peers{blockPeer("0.0.0.0/0", "10.32.0.0/24")}, Ports: ports{port("TCP", 443)}}})}},
		{name: "egress-named-port", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "to-http", "app=db", "Egress", nil, []egress{
				{To: peers{nsPeer("team=y")}, Ports: ports{portName("TCP", "http")}},
				{Ports: ports{portName("UDP", "dns")}},
			})}},
		{name: "several-policies", policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "deny-all", "", "Ingress,Egress", nil, nil),
			mkPolicy("a", "web-from-b", "app=web", "Ingress", []ingress{{From: peers{nsPeer("team=y")}}}, nil),
			mkPolicy("a", "web-dns", "app=web", "Egress", nil, []egress{{Ports: ports{port("UDP", 53)}}}),
			mkPolicy("b", "client-in", "app=client", "Ingress", []ingress{{From: peers{nsPeer("team=x")}}}, nil),
		}},
		{name: "bad-input",
			pods: append(basePods(), hostNet, done,
				mkPod("a", "pending", testNode, "", "app=web"),
				mkPod("a", "garbage-ip", testNode, "not-an-ip", "app=web"),
			),
			policies: []*networkingv1.NetworkPolicy{
				mkPolicy("a", "matches-nothing", "app=nothing", "Ingress", []ingress{{From: peers{podPeer("app=db")}}}, nil),
				mkPolicy("a", "bad-cidr", "app=web", "Ingress", []ingress{
					{From: peers{blockPeer("10.0.0.0/33"), blockPeer("10.1.0.0/16", "garbage")}},
					{From: peers{blockPeer("garbage"), podPeer("app=db")}, Ports: ports{port("TCP", 80)}},
					{From: peers{v6}},
				}, nil),
				mkPolicy("a", "bad-peers", "app=db", "Ingress", []ingress{
					{From: peers{{}, {PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Bogus"}}}}}},
					{Ports: ports{badProto, portRange("TCP", 90, 80), port("TCP", 70000)}},
				}, nil),
				{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "bad-selector"}, Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Bogus"}}}}},
			}},
		{name: "sample"},
		// Dual-stack and IPv6-only pods: each address gets the chains of
		// its family, selectors name the peers' addresses of both.
		{name: "dual-stack-selectors", pods: dualPods(), policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "deny-all", "", "Ingress,Egress", nil, nil),
			mkPolicy("a", "web-from-y", "app=web", "Ingress", []ingress{{From: peers{nsPeer("team=y")}, Ports: ports{portName("TCP", "http")}}}, nil),
			mkPolicy("a", "db-to-http", "app=db", "Egress", nil, []egress{{To: peers{nsPeer("team=y")}, Ports: ports{portName("TCP", "http")}}}),
			mkPolicy("b", "other-from-x", "app=other", "Ingress", []ingress{{From: peers{nsPeer("team=x")}}}, nil),
			mkPolicy("b", "client-any", "app=client", "Ingress", []ingress{{Ports: ports{port("TCP", 80)}}}, nil),
		}},
		// ipBlocks of both families, excepts of both (an except of the
		// other family ignored), and a rule whose peers are IPv4 only: it
		// allows nothing over IPv6.
		{name: "dual-stack-ipblocks", pods: dualPods(), policies: []*networkingv1.NetworkPolicy{
			mkPolicy("a", "web-blocks", "app=web", "Ingress", []ingress{
				{From: peers{blockPeer("10.32.0.0/16", "10.32.0.4/31"), blockPeer("fd32::/64", "fd32::4/127", "10.0.0.0/8")}},
				{From: peers{blockPeer("192.168.0.0/16")}, Ports: ports{port("UDP", 53)}},
			}, nil),
			mkPolicy("a", "db-out", "app=db", "Egress", nil, []egress{{To: peers{blockPeer("::/0", "fd32::/48")}, Ports: ports{port("TCP", 443)}}}),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := State{Node: testNode, Pods: tt.pods, Namespaces: baseNS(), Policies: tt.policies}
			if st.Pods == nil {
				st.Pods = basePods()
			}
			if tt.name == "sample" {
				st = sampleState()
			}
			rs := Build(st)
			status, err := json.MarshalIndent(rs.Policies, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got := rs.String() + "\n# status\n" + string(status) + "\n"
			golden(t, tt.name, got)
			// The same input in another order gives the same ruleset.
			rev := st
			rev.Pods = reversed(st.Pods)
			rev.Policies = reversed(st.Policies)
			rev.Namespaces = reversed(st.Namespaces)
			if again := Build(rev).String(); again != rs.String() {
				t.Errorf("ruleset depends on the order of the input:\n%s", again)
			}
			// Every rule translates to nftables expressions.
			if _, err := translate(rs); err != nil {
				t.Errorf("translate: %v", err)
			}
		})
	}
}

func reversed[T any](s []T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func TestRanges(t *testing.T) {
	tests := []struct {
		name  string
		cidr  string
		excpt []string
		want  string
	}{
		{"plain", "10.0.0.0/8", nil, "[10.0.0.0-10.255.255.255]"},
		{"host", "10.0.0.1/32", nil, "[10.0.0.1]"},
		{"except-middle", "10.0.0.0/24", []string{"10.0.0.128/26"}, "[10.0.0.0-10.0.0.127 10.0.0.192-10.0.0.255]"},
		{"except-edges", "10.0.0.0/24", []string{"10.0.0.0/25", "10.0.0.255/32"}, "[10.0.0.128-10.0.0.254]"},
		{"except-all", "10.0.0.0/24", []string{"10.0.0.0/23"}, "[]"},
		{"everything", "0.0.0.0/0", []string{"10.0.0.0/8"}, "[0.0.0.0-9.255.255.255 11.0.0.0-255.255.255.255]"},
		{"unmasked", "10.0.0.7/24", nil, "[10.0.0.0-10.0.0.255]"},
		{"except-other-family", "10.0.0.0/24", []string{"fd00::/8"}, "[10.0.0.0-10.0.0.255]"},
		{"ipv6-plain", "fd32::/48", nil, "[fd32::-fd32::ffff:ffff:ffff:ffff:ffff]"},
		{"ipv6-host", "fd32::7/128", nil, "[fd32::7]"},
		{"ipv6-unaligned", "fd32::/61", nil, "[fd32::-fd32::7:ffff:ffff:ffff:ffff]"},
		{"ipv6-except-middle", "fd32::/120", []string{"fd32::80/122"}, "[fd32::-fd32::7f fd32::c0-fd32::ff]"},
		{"ipv6-except-edges", "fd32::/120", []string{"fd32::/121", "fd32::ff/128"}, "[fd32::80-fd32::fe]"},
		{"ipv6-everything", "::/0", []string{"fd32::/16"}, "[::-fd31:ffff:ffff:ffff:ffff:ffff:ffff:ffff fd33::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]"},
		{"ipv6-except-other-family", "fd32::/127", []string{"0.0.0.0/0"}, "[fd32::-fd32::1]"},
		{"ipv4-mapped-is-ipv6", "::ffff:10.0.0.0/120", nil, "[::ffff:10.0.0.0-::ffff:10.0.0.255]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := ipBlockRanges(&networkingv1.IPBlock{CIDR: tt.cidr, Except: tt.excpt})
			if err != nil {
				t.Fatal(err)
			}
			if got := formatRanges(mergeRanges(rs)); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
	a := netip.MustParseAddr
	r := func(lo, hi string) ipRange { return ipRange{a(lo), a(hi)} }
	for _, tt := range []struct {
		name  string
		in    []ipRange
		want  string
		want4 string
		want6 string
	}{
		{name: "ipv4",
			in:   []ipRange{r("0.0.0.5", "0.0.0.6"), r("0.0.0.1", "0.0.0.2"), r("0.0.0.3", "0.0.0.3"), r("0.0.0.8", "0.0.0.9"), r("0.0.0.9", "0.0.0.20"), r("255.255.255.240", "255.255.255.255"), r("255.255.255.0", "255.255.255.245")},
			want: "[0.0.0.1-0.0.0.3 0.0.0.5-0.0.0.6 0.0.0.8-0.0.0.20 255.255.255.0-255.255.255.255]"},
		{name: "ipv6",
			in:   []ipRange{r("fd32::5", "fd32::6"), r("fd32::1", "fd32::2"), r("fd32::3", "fd32::3"), r("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), r("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff5")},
			want: "[fd32::1-fd32::3 fd32::5-fd32::6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]"},
		// The last IPv4 address and the first IPv6 one are no neighbours:
		// the families stay apart, the IPv4 ranges first.
		{name: "both-families",
			in:    []ipRange{r("::", "::1"), r("fd32::9", "fd32::9"), r("10.0.0.0", "255.255.255.255"), r("0.0.0.0", "0.0.0.0"), r("fd32::a", "fd32::b")},
			want:  "[0.0.0.0 10.0.0.0-255.255.255.255 ::-::1 fd32::9-fd32::b]",
			want4: "[0.0.0.0 10.0.0.0-255.255.255.255]", want6: "[::-::1 fd32::9-fd32::b]"},
	} {
		t.Run("merge-"+tt.name, func(t *testing.T) {
			merged := mergeRanges(tt.in)
			if got := formatRanges(merged); got != tt.want {
				t.Errorf("merge: got %s, want %s", got, tt.want)
			}
			if tt.want4 == "" {
				return
			}
			if got := formatRanges(rangesOf(merged, IPv4)); got != tt.want4 {
				t.Errorf("IPv4 ranges: got %s, want %s", got, tt.want4)
			}
			if got := formatRanges(rangesOf(merged, IPv6)); got != tt.want6 {
				t.Errorf("IPv6 ranges: got %s, want %s", got, tt.want6)
			}
		})
	}
}

func formatRanges(rs []ipRange) string {
	s := "["
	for i, r := range rs {
		if i > 0 {
			s += " "
		}
		s += r.String()
	}
	return s + "]"
}

// translate checks that every rule of rs translates to expressions, with a
// connection that is never flushed.
func translate(rs *Ruleset) (int, error) {
	c, err := nftables.New(nftables.WithTestDial(nil))
	if err != nil {
		return 0, err
	}
	if err := program(c, rs, nil); err != nil {
		return 0, err
	}
	return len(rs.Chains), nil
}
