package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// benchState is a node with nPods pods in 10 namespaces and nPolicies
// policies of all kinds, plus the pods a1 (a, app=web) and b1 (b,
// app=client) of the enforcement tests; every fourth policy selects a1 and
// the last one allows b1 to reach it on TCP 5201 (iperf3).
func benchState(nPods, nPolicies int) State {
	st := State{Node: testNode, Namespaces: []*corev1.Namespace{mkNS("a", "team=x"), mkNS("b", "team=y")}}
	for i := range 10 {
		st.Namespaces = append(st.Namespaces, mkNS(fmt.Sprintf("ns%d", i), fmt.Sprintf("team=t%d", i%3)))
	}
	for i := range nPods {
		node := testNode
		if i%5 == 4 {
			node = "node2"
		}
		st.Pods = append(st.Pods, mkPod(fmt.Sprintf("ns%d", i%10), fmt.Sprintf("pod%d", i), node,
			fmt.Sprintf("10.33.%d.%d", i/250, i%250+1), fmt.Sprintf("group=g%d,role=r%d", i%50, i%20), "http:TCP:8080", "dns:UDP:53"))
	}
	st.Pods = append(st.Pods,
		mkPod("a", "a1", testNode, "10.32.0.11", "app=web", "http:TCP:8080"),
		mkPod("b", "b1", testNode, "10.32.0.21", "app=client"))
	for i := range nPolicies {
		ns := fmt.Sprintf("ns%d", i%10)
		podSel := fmt.Sprintf("group=g%d", i%50)
		if i%4 == 0 {
			ns, podSel = "a", "app=web"
		}
		var np *networkingv1.NetworkPolicy
		switch i % 3 {
		case 0:
			np = mkPolicy(ns, fmt.Sprintf("pol%d", i), podSel, "Ingress", []ingress{
				{From: peers{podPeer(fmt.Sprintf("role=r%d", i%20))}, Ports: ports{portName("TCP", "http")}},
				{From: peers{bothPeer(fmt.Sprintf("team=t%d", i%3), fmt.Sprintf("role=r%d", (i+1)%20))}, Ports: ports{portRange("TCP", 9000, 9100)}},
			}, nil)
		case 1:
			np = mkPolicy(ns, fmt.Sprintf("pol%d", i), podSel, "Ingress,Egress", []ingress{
				{From: peers{blockPeer("10.33.0.0/16", fmt.Sprintf("10.33.%d.0/24", i%4))}},
			}, []egress{
				{To: peers{nsPeer(fmt.Sprintf("team=t%d", i%3))}, Ports: ports{portName("UDP", "dns")}},
				{To: peers{blockPeer("10.32.0.0/12")}},
			})
		default:
			np = mkPolicy(ns, fmt.Sprintf("pol%d", i), podSel, "Ingress", []ingress{
				{From: peers{nsPeer(fmt.Sprintf("team=t%d", i%3))}, Ports: ports{port("UDP", 53), port("TCP", 443)}},
			}, nil)
		}
		st.Policies = append(st.Policies, np)
	}
	st.Policies = append(st.Policies, mkPolicy("a", "iperf", "app=web", "Ingress",
		[]ingress{{From: peers{nsPeer("team=y")}, Ports: ports{port("TCP", 5201)}}}, nil))
	return st
}

func BenchmarkBuild(b *testing.B) {
	st := benchState(1000, 200)
	b.ReportAllocs()
	for b.Loop() {
		Build(st)
	}
}

// BenchmarkPolicyApply is the cost of one policy change with 1,000 pods and
// 200 policies: build the ruleset and replace the table atomically.
func BenchmarkPolicyApply(b *testing.B) {
	testnet.RequireRoot(b)
	ns := netnstest.New(b)
	nft := nftIn(b, ns)
	st := benchState(1000, 200)
	rs := Build(st)
	if err := nft.Apply(rs); err != nil {
		b.Fatal(err)
	}
	elems := 0
	for _, s := range rs.Sets {
		elems += len(s.Ranges) + len(s.Triples)
	}
	b.Logf("ruleset: %d chains, %d sets (%d elements), %d ingress + %d egress pods, %d counters",
		len(rs.Chains), len(rs.Sets), elems, len(rs.Ingress), len(rs.Egress), len(rs.Counters))
	i := 0
	for b.Loop() {
		// One change: a port of one policy.
		np := st.Policies[i%len(st.Policies)].DeepCopy()
		np.Spec.Ingress = append(np.Spec.Ingress, ingress{Ports: ports{port("TCP", 1000+i%1000)}})
		pols := append([]*networkingv1.NetworkPolicy{np}, st.Policies[:i%len(st.Policies)]...)
		pols = append(pols, st.Policies[i%len(st.Policies)+1:]...)
		s := st
		s.Policies = pols
		if err := nft.Apply(Build(s)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// TestThroughput compares TCP throughput between two pods of one node
// without the table and with 1,000 pods and 200 policies loaded (both pods
// isolated, the connection allowed). Root and iperf3 needed; not in -short.
func TestThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("throughput comparison skipped in -short mode")
	}
	testnet.RequireRoot(t)
	testnet.RequireCommand(t, "iperf3")
	n := newTestNodeNet(t)
	a1 := n.addPod("a1", "10.32.0.11")
	b1 := n.addPod("b1", "10.32.0.21")
	nft := nftIn(t, n.host.NetNS())

	measure := func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		srv := exec.CommandContext(ctx, "nsenter", "--net="+a1.ns, "--", "iperf3", "-s", "-1", "-B", a1.addr.String())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer srv.Wait()
		testnet.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
			out, _ := netnstest.Exec(a1.ns, "ss", "-Hltn", "sport = :5201")
			if !strings.Contains(out, "5201") {
				return fmt.Errorf("iperf3 server not listening")
			}
			return nil
		})
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+b1.ns, "--", "iperf3", "-c", a1.addr.String(), "-t", "3", "-J").Output()
		if err != nil {
			t.Fatalf("iperf3: %v: %s", err, out)
		}
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("iperf3 output: %v", err)
		}
		return res.End.SumReceived.BitsPerSecond / 1e9
	}

	none := measure()
	rs := Build(benchState(1000, 200))
	if err := nft.Apply(rs); err != nil {
		t.Fatal(err)
	}
	with := measure()
	t.Logf("TCP throughput pod to pod on one node: no policy %.2f Gbit/s, 200 policies and 1000 pods %.2f Gbit/s, ratio %.3f",
		none, with, with/none)
	if with == 0 {
		t.Error("no throughput with policies: the connection was denied")
	}
}

// BenchmarkTableCheck is the periodic check of the live table (Intact) on
// a node with 1,000 pods and 200 policies.
func BenchmarkTableCheck(b *testing.B) {
	testnet.RequireRoot(b)
	nft := nftIn(b, netnstest.New(b))
	rs := Build(benchState(1000, 200))
	if err := nft.Apply(rs); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ok, err := nft.Intact(rs)
		if err != nil || !ok {
			b.Fatalf("Intact = %v, %v", ok, err)
		}
	}
}
