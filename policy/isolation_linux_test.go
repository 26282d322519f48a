package policy

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshnet/mesh/kube/kubetest"
)

// TestAddressReuseTerminatingPod: a2 (app=db, allowed into a1) is
// Terminating and its address was released and given to a new pod of
// another namespace. The new pod must not inherit a2's access.
func TestAddressReuseTerminatingPod(t *testing.T) {
	n := newTestNodeNet(t)
	n.addPod("a1", "10.32.0.11")
	n.addPod("new", "10.32.0.12") // a2's old address
	n.addPod("b1", "10.32.0.21")
	old := mkPod("a", "a2", testNode, "10.32.0.12", "app=db")
	old.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	gone := metav1.NewTime(time.Now())
	old.DeletionTimestamp = &gone
	fresh := mkPod("b", "new", testNode, "10.32.0.12", "app=other")
	fresh.CreationTimestamp = metav1.NewTime(time.Now())
	objs := []runtime.Object{mkNS("a", "team=x"), mkNS("b", "team=y"),
		mkPod("a", "a1", testNode, "10.32.0.11", "app=web"), mkPod("b", "b1", testNode, "10.32.0.21", "app=client"),
		old, fresh,
		mkPolicy("a", "web-from-db", "app=web", "Ingress", []ingress{{From: peers{podPeer("app=db")}}}, nil)}
	startController(t, fake.NewClientset(objs...), nftIn(t, n.host.NetNS()))
	probes := []probeSpec{{"new", "a1", "tcp", 80}, {"b1", "a1", "tcp", 80}, {"a1", "new", "tcp", 80}}
	got, err := n.runProbes(probes)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes[:2] {
		if got[p] {
			t.Errorf("%s allowed: the new pod inherited the Terminating pod's access\n%s", p, n.listTable())
		}
	}
	if !got[probes[2]] {
		t.Errorf("%s denied: the new pod is not isolated by anything", probes[2])
	}
}

// TestBuildAddressOwner: whichever order the API lists them in, of two pods
// with one address the one not being deleted, then the newer, is the
// address's pod.
func TestBuildAddressOwner(t *testing.T) {
	now := time.Now()
	mk := func(ns, name, labels string, age time.Duration, deleting bool) *corev1.Pod {
		p := mkPod(ns, name, "other-node", "10.32.1.5", labels)
		p.CreationTimestamp = metav1.NewTime(now.Add(-age))
		if deleting {
			d := metav1.NewTime(now)
			p.DeletionTimestamp = &d
		}
		return p
	}
	pol := mkPolicy("a", "web-from-db", "app=web", "Ingress", []ingress{{From: peers{podPeer("app=db")}}}, nil)
	web := mkPod("a", "web", testNode, "10.32.0.11", "app=web")
	for _, tc := range []struct {
		name    string
		pods    []*corev1.Pod
		allowed bool // 10.32.1.5 is in web-from-db's peers
	}{
		{"terminating-db-and-new-other", []*corev1.Pod{mk("a", "db", "app=db", time.Hour, true), mk("b", "x", "app=other", 0, false)}, false},
		{"old-other-terminating-new-db", []*corev1.Pod{mk("b", "x", "app=other", time.Hour, true), mk("a", "db", "app=db", 0, false)}, true},
		{"both-running-newer-wins", []*corev1.Pod{mk("a", "db", "app=db", time.Hour, false), mk("b", "x", "app=other", time.Minute, false)}, false},
		{"only-terminating-db", []*corev1.Pod{mk("a", "db", "app=db", time.Hour, true)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range [][]*corev1.Pod{tc.pods, reversed(tc.pods)} {
				rs := Build(State{Node: testNode, Pods: append([]*corev1.Pod{web}, order...), Namespaces: []*corev1.Namespace{mkNS("a", ""), mkNS("b", "")}, Policies: []*networkingv1.NetworkPolicy{pol}})
				if got := strings.Contains(rs.String(), "10.32.1.5"); got != tc.allowed {
					t.Errorf("10.32.1.5 among the peers = %v, want %v:\n%s", got, tc.allowed, rs)
				}
			}
		})
	}
}

// TestBuildAddressOwnerDualStack: a Terminating dual-stack pod whose IPv4
// address a new pod has keeps neither address: its IPv6 address is no
// peer either (both were released together), whichever the input order.
func TestBuildAddressOwnerDualStack(t *testing.T) {
	now := time.Now()
	old := mkPod("a", "db", "other-node", "10.32.1.5,fd32::1:5", "app=db")
	old.CreationTimestamp = metav1.NewTime(now.Add(-time.Hour))
	gone := metav1.NewTime(now)
	old.DeletionTimestamp = &gone
	fresh := mkPod("b", "x", "other-node", "10.32.1.5,fd32::1:6", "app=other")
	fresh.CreationTimestamp = metav1.NewTime(now)
	pol := mkPolicy("a", "web-from-db", "app=web", "Ingress", []ingress{{From: peers{podPeer("app=db")}}}, nil)
	web := mkPod("a", "web", testNode, "10.32.0.11,fd32::b", "app=web")
	nss := []*corev1.Namespace{mkNS("a", ""), mkNS("b", "")}
	for _, tc := range []struct {
		name    string
		pods    []*corev1.Pod
		allowed bool // the old pod's addresses are web-from-db's peers
	}{
		{"ipv4-reused", []*corev1.Pod{old, fresh}, false},
		{"alone", []*corev1.Pod{old}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, order := range [][]*corev1.Pod{tc.pods, reversed(tc.pods)} {
				rs := Build(State{Node: testNode, Pods: append([]*corev1.Pod{web}, order...), Namespaces: nss, Policies: []*networkingv1.NetworkPolicy{pol}}).String()
				for _, a := range []string{"10.32.1.5", "fd32::1:5"} {
					if got := strings.Contains(rs, a); got != tc.allowed {
						t.Errorf("%s among the peers = %v, want %v:\n%s", a, got, tc.allowed, rs)
					}
				}
				if strings.Contains(rs, "fd32::1:6") {
					t.Errorf("the new pod (app=other) is a peer of web-from-db:\n%s", rs)
				}
			}
		})
	}
}

// TestAdmitFailsClosed: ADD waits for the controller. Before it synced,
// Admit fails; a pod that the API does not show yet fails; a pod the API
// shows without an address yet is enforced on the addresses (of both
// families) it is given the moment Admit returns.
func TestAdmitFailsClosed(t *testing.T) {
	n := newTestNodeNet(t)
	n.addPod("a3", "10.32.0.13", to6("10.32.0.13"))
	n.addPod("b1", "10.32.0.21", to6("10.32.0.21"))
	pending := mkPod("a", "a3", testNode, "", "app=web")
	pending.Status.Phase = corev1.PodPending
	client := fake.NewClientset(mkNS("a", ""), mkNS("b", ""), pending,
		mkPod("b", "b1", testNode, "10.32.0.21,"+to6("10.32.0.21"), "app=client"),
		mkPolicy("a", "deny", "", "Ingress", nil, nil))
	n.warmUp()
	c := New(kubetest.Client(client), testNode, testLogger(t), nftIn(t, n.host.NetNS()))
	addr, addr6 := netip.MustParseAddr("10.32.0.13"), netip.MustParseAddr(to6("10.32.0.13"))

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err := c.Admit(ctx, "a", "a3", []netip.Addr{addr, addr6})
	cancel()
	if !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Admit before the controller synced = %v, want ErrNotSynced", err)
	}

	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })

	denied := []probeSpec{{"b1", "a3", "tcp", 80}, {"b1", "a3", "tcp6", 80}}
	// Before admission the pod's addresses are in no rule: open.
	<-c.Ready()
	got, err := n.runProbes(denied)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range denied {
		if !got[p] {
			t.Fatalf("%s denied before admission: the test shows nothing\n%s", p, n.listTable())
		}
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Admit(ctx, "a", "a3", []netip.Addr{addr, addr6}); err != nil {
		t.Fatalf("Admit: %v", err)
	}
	got, err = n.runProbes(denied)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range denied {
		if got[p] {
			t.Errorf("%s allowed right after Admit returned\n%s", p, n.listTable())
		}
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	err = c.Admit(ctx2, "a", "ghost", []netip.Addr{netip.MustParseAddr("10.32.0.14")})
	if err == nil || !strings.Contains(err.Error(), "a/ghost not seen in the Kubernetes API") {
		t.Errorf("Admit of a pod the API does not show = %v, want a clear error", err)
	}
	// The address of a Terminating pod, released and given to a new pod:
	// Admit must see the new pod as its holder.
	old := mkPod("b", "old", testNode, "10.32.0.15", "app=client")
	old.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	bye := metav1.NewTime(time.Now())
	old.DeletionTimestamp = &bye
	if _, err := client.CoreV1().Pods("b").Create(context.Background(), old, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh := mkPod("a", "a4", testNode, "", "app=web")
	fresh.Status.Phase = corev1.PodPending
	fresh.CreationTimestamp = metav1.NewTime(time.Now())
	if _, err := client.CoreV1().Pods("a").Create(context.Background(), fresh, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx3, cancel3 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel3()
	if err := c.Admit(ctx3, "a", "a4", []netip.Addr{netip.MustParseAddr("10.32.0.15")}); err != nil {
		t.Errorf("Admit of a new pod on a Terminating pod's address: %v", err)
	}

	// Released: the claims go, the addresses leave the rules.
	c.Forget(addr)
	c.Forget(addr6)
	c.mu.Lock()
	_, still := c.claims[addr]
	_, still6 := c.claims[addr6]
	c.mu.Unlock()
	if still || still6 {
		t.Errorf("claim on %s or %s kept after Forget", addr, addr6)
	}
}
