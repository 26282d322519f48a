package policy

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// TestApplyChangesInPlace: on the kernel's nftables, a sequence of changes
// applied in place (one transaction of only what changed each) leaves the
// same table as writing each ruleset whole into an empty namespace: pods,
// peers, policies and namespace labels changing, a policy deleted, and
// everything undone; then the pods made dual-stack, an IPv6 ipBlock
// changed, and back to IPv4 alone. Each Apply took the in-place path (its
// operations are the delta's, not a rewrite's).
func TestApplyChangesInPlace(t *testing.T) {
	testnet.RequireRoot(t)
	inPlaceNS, wholeNS := netnstest.New(t), netnstest.New(t)
	inPlace, whole := nftIn(t, inPlaceNS), nftIn(t, wholeNS)

	type step struct {
		name string
		st   State
	}
	st := scaleState(1000)
	steps := []step{{"start", st}}
	cur := st
	for _, c := range scaleChanges(1000) {
		cur = c.apply(cur)
		steps = append(steps, step{c.name, cur})
	}
	// An ipBlock reaching the top of the address space: its last range
	// has no end element in the kernel's interval set.
	withBlock := func(st State, cidr, except string) State {
		st.Policies = slices.Clone(st.Policies)
		np := st.Policies[0].DeepCopy()
		np.Spec.Ingress = append(np.Spec.Ingress, ingress{From: peers{blockPeer(cidr, except)}})
		st.Policies[0] = np
		return st
	}
	steps = append(steps,
		step{"ipBlock 0.0.0.0/0 except 10.0.0.0/8 added", withBlock(cur, "0.0.0.0/0", "10.0.0.0/8")},
		step{"its except changed to 10.0.0.0/9", withBlock(cur, "0.0.0.0/0", "10.0.0.0/9")},
		step{"its except changed to 192.168.0.0/16", withBlock(cur, "0.0.0.0/0", "192.168.0.0/16")})
	// Every second pod gets an IPv6 address (this node's among them):
	// IPv6 map, self and peer set elements, chains and sets appear.
	dual := cur
	dual.Pods = slices.Clone(cur.Pods)
	for i, p := range dual.Pods {
		if i%2 == 0 {
			continue
		}
		p = p.DeepCopy()
		a6 := scaleAddr6(i)
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a6})
		dual.Pods[i] = p
	}
	steps = append(steps,
		step{"every second pod dual-stack", dual},
		step{"ipBlock ::/0 except fd64::/16 added", withBlock(dual, "::/0", "fd64::/16")},
		step{"its except changed to fd64::/17", withBlock(dual, "::/0", "fd64::/17")},
		step{"IPv4 only again", cur})
	del := cur
	del.Policies = slices.DeleteFunc(slices.Clone(del.Policies), func(np *networkingv1.NetworkPolicy) bool { return np.Name == "pol1" || np.Name == "pol3" })
	steps = append(steps, step{"two policies of this node deleted", del}, step{"back to the start", st})

	var prev *Ruleset
	for i, s := range steps {
		rs := Build(s.st)
		if err := inPlace.Apply(rs); err != nil {
			t.Fatalf("step %d (%s): in place: %v", i, s.name, err)
		}
		if prev != nil {
			if want := diffRulesets(prev, rs).ops(); inPlace.LastOps() != want {
				t.Errorf("step %d (%s): %d operations, the change has %d: the table was rewritten", i, s.name, inPlace.LastOps(), want)
			}
		}
		prev = rs
		whole.RewriteNext()
		if err := whole.Apply(rs); err != nil {
			t.Fatalf("step %d (%s): whole: %v", i, s.name, err)
		}
		got := canonicalTable(netnstest.Run(t, inPlaceNS, "nft", "list", "table", "inet", TableName))
		want := canonicalTable(netnstest.Run(t, wholeNS, "nft", "list", "table", "inet", TableName))
		hasV6 := slices.ContainsFunc(s.st.Pods, func(p *corev1.Pod) bool { return len(p.Status.PodIPs) > 1 })
		if !strings.Contains(want, "chain ingress-") || !strings.Contains(want, "elements = {10.") || hasV6 != strings.Contains(want, "elements = {fd64:") {
			t.Fatalf("step %d (%s): the listing holds no pod chains or elements:\n%s", i, s.name, want)
		}
		if got != want {
			t.Fatalf("step %d (%s): the table changed in place differs from the one written whole: %s", i, s.name, firstDiff(want, got))
		}
		t.Logf("step %d (%s): %d operations", i, s.name, inPlace.LastOps())
	}
}

// canonicalTable makes two listings of one table comparable whatever the
// order objects were made in: the top-level blocks sorted, and the
// elements of each set and map sorted (rules keep their order).
func canonicalTable(s string) string {
	s = counterRE.ReplaceAllString(s, "packets 0 bytes 0")
	var blocks []string
	var cur []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "\t\t") && strings.HasSuffix(l, "{") {
			cur = []string{l}
			continue
		}
		if cur == nil {
			continue
		}
		if l == "\t}" {
			blocks = append(blocks, sortElements(strings.Join(cur, "\n")))
			cur = nil
			continue
		}
		if strings.TrimSpace(l) != "" {
			cur = append(cur, l)
		}
	}
	slices.Sort(blocks)
	return strings.Join(blocks, "\n")
}

// sortElements sorts the elements of "elements = { a, b, c }" in a block.
func sortElements(b string) string {
	start := strings.Index(b, "elements = {")
	if start < 0 {
		return b
	}
	end := strings.Index(b[start:], "}")
	if end < 0 {
		return b
	}
	inner := b[start+len("elements = {") : start+end]
	var elems []string
	for _, e := range strings.Split(inner, ",") {
		if e = strings.Join(strings.Fields(e), " "); e != "" {
			elems = append(elems, e)
		}
	}
	slices.Sort(elems)
	return b[:start] + fmt.Sprintf("elements = {%s}", strings.Join(elems, ", ")) + b[start+end+1:]
}

// scalePods is the size of TestControllerScale: 10,000 pods (1,000
// namespaces, 1,000 policies), under a second.
var scalePods = flag.Int("policy.scale.pods", 10000, "pods of TestControllerScale (a multiple of 1,000)")

// appliedRecorder passes rulesets on to the real applier and tells when
// one was applied.
type appliedRecorder struct {
	*NFT
	applied chan struct{}
}

func (a *appliedRecorder) Apply(rs *Ruleset) error {
	err := a.NFT.Apply(rs)
	if err == nil {
		select {
		case a.applied <- struct{}{}:
		default:
		}
	}
	return err
}

// TestControllerScale measures the controller of one node on a cluster of
// 10,000 pods (-policy.scale.pods), a tenth as many namespaces and
// policies, the fake clientset as API server and the kernel's nftables in
// a test namespace: the heap the controller adds (its caches and rulesets,
// after GC), the time from an API change until its rules are in the table,
// and the nftables operations of that change, which must not depend on the
// cluster's size (TestApplyWorkPerChange compares two sizes).
func TestControllerScale(t *testing.T) {
	testnet.RequireRoot(t)
	n := *scalePods
	if n < 1000 || n%1000 != 0 {
		t.Fatalf("-policy.scale.pods=%d: want a multiple of 1000", n)
	}
	res := measureControllerScale(t, n)
	t.Logf("policy controller, %d pods, %d namespaces, %d policies, %d of the pods on this node:", n, n/scalePodsPerNS, n/scalePodsPerNS, scaleLocalPods)
	t.Logf("  heap added by the controller (after GC): %.1f MiB; first sync and whole-table write: %v (%d operations)", float64(res.heap)/(1<<20), res.sync.Round(time.Millisecond), res.syncOps)
	for _, c := range res.changes {
		t.Logf("  %-60s %8v %4d operations", c.name, c.took.Round(100*time.Microsecond), c.ops)
		if c.ops > res.syncOps/20 {
			t.Errorf("%s: %d operations, more than 5%% of the whole table (%d)", c.name, c.ops, res.syncOps)
		}
		// A generous bound for a loaded 2-core machine: a change is
		// applied within seconds, not minutes.
		if c.took > 20*time.Second {
			t.Errorf("%s took %v", c.name, c.took)
		}
	}
	// Memory: the caches hold every object of the cluster; bounded
	// generously at 64 KiB per pod (measured: see docs/scale.md).
	if res.heap > int64(n)*64<<10 {
		t.Errorf("the controller adds %d bytes of heap for %d pods", res.heap, n)
	}
}

type scaleResult struct {
	heap    int64
	sync    time.Duration
	syncOps int
	changes []scaleChangeResult
}

type scaleChangeResult struct {
	name string
	took time.Duration
	ops  int
}

// fatten gives a pod what real pods carry and policies do not need: an
// annotation of the size of kubectl's last-applied-configuration, an image,
// environment variables, a volume and its mount, probes, conditions and
// container statuses (about 3 KB in all).
func fatten(p *corev1.Pod) *corev1.Pod {
	p = p.DeepCopy()
	p.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1500)}
	p.UID = "00000000-0000-0000-0000-000000000000"
	p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	c := &p.Spec.Containers[0]
	c.Image = "registry.example/team/app:1.2.3"
	for i := range 10 {
		c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", i), Value: "some-value-of-a-setting"})
	}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready"}}}
	p.Status.HostIP = "192.0.2.1"
	for _, ct := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: ct, Status: corev1.ConditionTrue})
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", Ready: true, Image: c.Image, ImageID: "sha256:" + strings.Repeat("0", 64), ContainerID: "containerd://" + strings.Repeat("0", 64)}}
	return p
}

func heapAfterGC() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// measureControllerScale runs a controller on scaleState(n) and applies
// the changes the table must follow through the API.
func measureControllerScale(t testing.TB, n int) scaleResult {
	st := scaleState(n)
	var objs []k8sruntime.Object
	for _, o := range st.Namespaces {
		objs = append(objs, o)
	}
	for _, o := range st.Pods {
		objs = append(objs, fatten(o))
	}
	for _, o := range st.Policies {
		objs = append(objs, o)
	}
	client := fake.NewClientset(objs...)
	objs, st = nil, State{}
	rec := &appliedRecorder{NFT: nftIn(t, netnstest.New(t)), applied: make(chan struct{}, 1)}
	var res scaleResult
	before := heapAfterGC()
	start := time.Now()
	c := startController(t, client, rec)
	res.sync = time.Since(start)
	res.syncOps = rec.LastOps()
	res.heap = heapAfterGC() - before
	<-rec.applied // the first apply's

	ctx := context.Background()
	nodes := n / scalePodsPerNode
	change := func(name string, do func() error) {
		t.Helper()
		start := time.Now()
		if err := do(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		select {
		case <-rec.applied:
		case <-time.After(time.Minute):
			t.Fatalf("%s: not applied within a minute", name)
		}
		res.changes = append(res.changes, scaleChangeResult{name, time.Since(start), rec.LastOps()})
	}
	change("pod added on another node, a peer of this node's policies", func() error {
		p := mkPod("ns1", "new-remote", "node2", "10.96.0.1", "app=web,role=r1", "http:TCP:8080", "dns:UDP:53")
		_, err := client.CoreV1().Pods("ns1").Create(ctx, p, metav1.CreateOptions{})
		return err
	})
	change("pod added on this node", func() error {
		p := scalePod(1, nodes)
		p.Name, p.Status.PodIP, p.Status.PodIPs = "new-local", "10.96.0.3", []corev1.PodIP{{IP: "10.96.0.3"}}
		_, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		return err
	})
	change("policy of this node changed (a port added)", func() error {
		np := scalePolicy(0)
		np.Spec.Ingress[0].Ports = append(np.Spec.Ingress[0].Ports, port("TCP", 8443))
		_, err := client.NetworkingV1().NetworkPolicies(np.Namespace).Update(ctx, np, metav1.UpdateOptions{})
		return err
	})
	change("namespace label changed (team t1 to t2)", func() error {
		ns := mkNS("ns11", "team=t2")
		_, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
		return err
	})
	runtime.KeepAlive(c)
	return res
}

// TestSlimPodKeepsWhatPoliciesRead: the pod cache's transform drops what
// real pods carry beyond what policies read, and the table built from
// slimmed pods is the one built from whole pods (Terminating pods and
// address reuse included).
func TestSlimPodKeepsWhatPoliciesRead(t *testing.T) {
	st := scaleState(1000)
	whole, slim := st, st
	whole.Pods, slim.Pods = nil, nil
	for i, p := range st.Pods {
		p = fatten(p)
		p.CreationTimestamp = metav1.NewTime(time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC))
		if i%7 == 0 {
			now := metav1.NewTime(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC))
			p.DeletionTimestamp = &now
		}
		if i%11 == 0 && i > 0 { // an address reused by a newer pod
			p.Status.PodIP, p.Status.PodIPs = scaleAddr(i-1), []corev1.PodIP{{IP: scaleAddr(i - 1)}}
		}
		whole.Pods = append(whole.Pods, p)
		s, err := slimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		sp := s.(*corev1.Pod)
		if sp.Annotations != nil || sp.Spec.Containers[0].Env != nil || sp.Status.Conditions != nil {
			t.Fatalf("slimPod kept what policies do not read: %+v", sp)
		}
		if podChanged(p, sp) {
			t.Fatalf("podChanged sees a difference between a pod and its slim form")
		}
		slim.Pods = append(slim.Pods, sp)
	}
	if a, b := Build(whole).String(), Build(slim).String(); a != b {
		t.Errorf("the table from slim pods differs: %s", firstDiff(a, b))
	}
}
