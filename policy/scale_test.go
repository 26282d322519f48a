package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// The cluster of the scale tests: pods in namespaces of 10, one policy per
// namespace, the pods spread over nodes of 100. This node (testNode) holds
// the same 100 pods whatever the size, one in each of the namespaces ns0 to
// ns99 (scaleLocal). So comparing two sizes compares the same node in a
// smaller and a larger cluster.
const (
	scalePodsPerNS   = 10
	scalePodsPerNode = 100
	scaleLocalPods   = 100
)

// scaleAddr is the address of pod i: 10.64.0.1 onwards, contiguous.
func scaleAddr(i int) string {
	a := netip.MustParseAddr("10.64.0.1").As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// scaleAddr6 is the IPv6 twin of scaleAddr(i), in fd64::/96.
func scaleAddr6(i int) string {
	a := netip.MustParseAddr(scaleAddr(i)).As4()
	b := netip.MustParseAddr("fd64::").As16()
	copy(b[12:], a[:])
	return netip.AddrFrom16(b).String()
}

// scaleLocal is the index in its namespace of this node's pod: the web
// pod (2) where the namespace's policy selects web pods (kind 1), else a
// database pod (1), so every kind of policy selects pods of this node.
func scaleLocal(ns int) int {
	if ns%4 == 1 {
		return 2
	}
	return 1
}

func scaleNode(i, nodes int) string {
	ns := i / scalePodsPerNS
	if ns < scaleLocalPods && i%scalePodsPerNS == scaleLocal(ns) {
		return testNode
	}
	return fmt.Sprintf("node%d", 2+i%max(nodes-1, 1))
}

// scalePod is pod i: app=web or db, role r0 to r2, ports http and dns.
func scalePod(i, nodes int) *corev1.Pod {
	idx := i % scalePodsPerNS
	app := "web"
	if idx%2 == 1 {
		app = "db"
	}
	return mkPod(fmt.Sprintf("ns%d", i/scalePodsPerNS), fmt.Sprintf("pod%d", i), scaleNode(i, nodes), scaleAddr(i),
		fmt.Sprintf("app=%s,role=r%d", app, idx%3), "http:TCP:8080", "dns:UDP:53")
}

// scalePolicy is the policy of namespace j, one of four kinds: allow a
// role of the namespace on TCP 80; allow a team of namespaces in and out
// (DNS by name); allow an ipBlock to the named port http; deny all to the
// databases.
func scalePolicy(j int) *networkingv1.NetworkPolicy {
	ns := fmt.Sprintf("ns%d", j)
	name := fmt.Sprintf("pol%d", j)
	team := fmt.Sprintf("team=t%d", j%10)
	switch j % 4 {
	case 0:
		return mkPolicy(ns, name, "", "Ingress", []ingress{{From: peers{podPeer("role=r0")}, Ports: ports{port("TCP", 80)}}}, nil)
	case 1:
		return mkPolicy(ns, name, "app=web", "Ingress,Egress",
			[]ingress{{From: peers{bothPeer(team, "role=r1")}}},
			[]egress{{To: peers{nsPeer(team)}, Ports: ports{portName("UDP", "dns")}}})
	case 2:
		return mkPolicy(ns, name, "", "Ingress", []ingress{{From: peers{blockPeer("10.0.0.0/8", "10.200.0.0/16")}, Ports: ports{portName("TCP", "http")}}}, nil)
	}
	return mkPolicy(ns, name, "app=db", "Ingress,Egress", nil, nil)
}

// scaleState is a cluster of nPods pods, nPods/10 namespaces (team t0 to
// t9) and as many policies, on nPods/100 nodes.
func scaleState(nPods int) State {
	nodes := nPods / scalePodsPerNode
	st := State{Node: testNode}
	for j := range nPods / scalePodsPerNS {
		st.Namespaces = append(st.Namespaces, mkNS(fmt.Sprintf("ns%d", j), fmt.Sprintf("team=t%d", j%10)))
		st.Policies = append(st.Policies, scalePolicy(j))
	}
	for i := range nPods {
		st.Pods = append(st.Pods, scalePod(i, nodes))
	}
	return st
}

// scaleChange is one change of the API on a cluster.
type scaleChange struct {
	name string
	// peerOnly: the change touches only peers of this node's policies,
	// so it must change elements only.
	apply func(st State) State
}

// scaleChanges are the changes measured: each returns a new state and
// leaves st alone.
func scaleChanges(nPods int) []scaleChange {
	nodes := nPods / scalePodsPerNode
	return []scaleChange{
		{"pod added on another node, a peer of this node's policies", func(st State) State {
			// In ns1 (team t1), role r1: a peer of the team-t1 policies.
			p := mkPod("ns1", "new-remote", "node2", "10.96.0.1", "app=web,role=r1", "http:TCP:8080", "dns:UDP:53")
			st.Pods = append(slices.Clone(st.Pods), p)
			return st
		}},
		{"pod added on another node, no peer of this node's policies", func(st State) State {
			p := mkPod("ns1", "new-stranger", "node2", "10.96.0.2", "app=none,role=r9")
			st.Pods = append(slices.Clone(st.Pods), p)
			return st
		}},
		{"pod added on this node", func(st State) State {
			p := scalePod(1, nodes)
			p.Name, p.Status.PodIP, p.Status.PodIPs = "new-local", "10.96.0.3", []corev1.PodIP{{IP: "10.96.0.3"}}
			st.Pods = append(slices.Clone(st.Pods), p)
			return st
		}},
		{"policy of this node changed (a port added)", func(st State) State {
			st.Policies = slices.Clone(st.Policies)
			np := st.Policies[0].DeepCopy() // ns0/pol0 selects this node's pod1
			np.Spec.Ingress[0].Ports = append(np.Spec.Ingress[0].Ports, port("TCP", 8443))
			st.Policies[0] = np
			return st
		}},
		{"namespace label changed (team t1 to t2)", func(st State) State {
			st.Namespaces = slices.Clone(st.Namespaces)
			ns := st.Namespaces[11].DeepCopy() // ns11, team t1
			ns.Labels["team"] = "t2"
			st.Namespaces[11] = ns
			return st
		}},
	}
}

// TestRenderOnlyLocal: what a node programs depends only on its own pods,
// the policies that select them and their peers. 1,000 pods on other
// nodes that no policy of this node names, and policies in their
// namespaces, change nothing rendered; the table's size does not grow with
// them.
func TestRenderOnlyLocal(t *testing.T) {
	base := scaleState(1000)
	before := Build(base).String()

	st := base
	st.Pods = slices.Clone(st.Pods)
	st.Policies = slices.Clone(st.Policies)
	for i := range 1000 {
		ns := fmt.Sprintf("other%d", i/10)
		if i%10 == 0 {
			st.Namespaces = append(st.Namespaces, mkNS(ns, "team=other"))
			// Policies of all four kinds, also named before this node's
			// in the sort order, selecting only the other pods.
			np := scalePolicy(i / 10)
			np.Namespace = ns
			np.Name = fmt.Sprintf("a%d", i)
			st.Policies = append(st.Policies, np)
		}
		st.Pods = append(st.Pods, mkPod(ns, fmt.Sprintf("p%d", i), fmt.Sprintf("node%d", 20+i%10),
			fmt.Sprintf("10.112.%d.%d", i/250, i%250+1), "app=web,role=r5"))
	}
	after := Build(st)
	if got := after.String(); got != before {
		t.Errorf("1,000 pods and 100 policies of other nodes changed the table of this node:\n%s", firstDiff(before, got))
	}
	if fullOps(after) == 0 || len(after.Ingress) == 0 {
		t.Fatalf("the test's node has nothing to enforce: %d ops, %d pods with ingress rules", fullOps(after), len(after.Ingress))
	}
}

// firstDiff shows the first line where a and b differ.
func firstDiff(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(la), len(lb)) {
		if la[i] != lb[i] {
			return fmt.Sprintf("line %d: %q, then %q", i+1, la[i], lb[i])
		}
	}
	return fmt.Sprintf("%d lines, then %d", len(la), len(lb))
}

// TestApplyWorkPerChange: the nftables work of one change (objects,
// rules and elements written or deleted: delta.ops, what NFT.Apply sends)
// on the same node is the same in a cluster of 1,000 pods and one of
// 10,000 pods (1,000 namespaces, 1,000 policies), and a small fraction of
// a rewrite of the table.
func TestApplyWorkPerChange(t *testing.T) {
	sizes := []int{1000, 10000}
	ops := map[string][]int{}
	full := map[int]int{}
	for _, n := range sizes {
		st := scaleState(n)
		rs := Build(st)
		full[n] = fullOps(rs)
		for _, c := range scaleChanges(n) {
			next := Build(c.apply(st))
			ops[c.name] = append(ops[c.name], diffRulesets(rs, next).ops())
		}
	}
	t.Logf("whole table: %d operations at %d pods, %d at %d pods", full[1000], 1000, full[10000], 10000)
	if full[10000] <= full[1000] {
		t.Errorf("the table of the larger cluster is not larger (%d vs %d operations): the test measures nothing", full[10000], full[1000])
	}
	for _, c := range scaleChanges(1000) {
		o := ops[c.name]
		t.Logf("%-60s %4d operations at 1,000 pods, %4d at 10,000 pods", c.name, o[0], o[1])
		if o[1] != o[0] {
			t.Errorf("%s: %d operations at 10,000 pods, %d at 1,000: the work grows with the cluster", c.name, o[1], o[0])
		}
		if o[1] > full[10000]/20 {
			t.Errorf("%s: %d operations, more than 5%% of a rewrite (%d)", c.name, o[1], full[10000])
		}
	}
	if o := ops[scaleChanges(1000)[0].name]; o[0] == 0 {
		t.Error("a new peer of this node's policies changed nothing")
	}
	if o := ops[scaleChanges(1000)[1].name]; o[0] != 0 {
		t.Errorf("a pod nobody here names changed %d things", o[0])
	}
}

// BenchmarkRebuildScale is the in-memory part of one change on a node of
// the 10,000-pod cluster (TestControllerScale): build the ruleset from
// every object and compare it with the one in the table.
func BenchmarkRebuildScale(b *testing.B) {
	st := scaleState(10000)
	next := scaleChanges(10000)[0].apply(st)
	prev := Build(st)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		s := st
		if i%2 == 0 {
			s = next
		}
		rs := Build(s)
		if diffRulesets(prev, rs).empty() == (i%2 == 0) {
			b.Fatal("the change was not seen, or a non-change was")
		}
	}
}
