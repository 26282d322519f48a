package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
	"github.com/meshnet/mesh/kube/kubetest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// fakeNFT records what it is asked to apply.
type fakeNFT struct {
	mu      sync.Mutex
	text    string
	applies int
	removed bool
}

func (f *fakeNFT) Apply(rs *Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.text, f.applies, f.removed = rs.String(), f.applies+1, false
	return nil
}

func (f *fakeNFT) Counters() (map[string]uint64, error) { return map[string]uint64{}, nil }

func (f *fakeNFT) Intact(*Ruleset) (bool, error) { return true, nil }

func (f *fakeNFT) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.text, f.removed = "", true
	return nil
}

func (f *fakeNFT) get() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.text
}

// testLogger logs to t, or nowhere with -v unset.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startController runs a controller until t ends and waits until it is
// ready.
func startController(t testing.TB, client kubernetes.Interface, nft Applier) *Controller {
	t.Helper()
	c := New(kubetest.Client(client), testNode, testLogger(t), nft)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("controller not ready after 30s")
	}
	return c
}

func objects() []runtime.Object {
	var objs []runtime.Object
	for _, ns := range baseNS() {
		objs = append(objs, ns)
	}
	for _, p := range basePods() {
		objs = append(objs, p)
	}
	return objs
}

func TestControllerBadInput(t *testing.T) {
	ctx := context.Background()
	pending := mkPod("a", "pending", testNode, "", "app=web")
	client := fake.NewClientset(append(objects(), pending)...)
	nft := &fakeNFT{}
	c := startController(t, client, nft)
	if got := nft.get(); strings.Contains(got, "chain ingress") {
		t.Fatalf("rules without policies:\n%s", got)
	}

	bad := mkPolicy("a", "bad", "app=web", "Ingress", []ingress{{From: peers{blockPeer("not-a-cidr")}}}, nil)
	if _, err := client.NetworkingV1().NetworkPolicies("a").Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		st := c.Status()
		if len(st) != 1 || len(st[0].Warnings) != 1 || !strings.Contains(st[0].Warnings[0], "not-a-cidr") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	// Fail closed: a/web is isolated, nothing is allowed.
	want := " {\n\t\tcounter name \"policy:a/bad\" drop comment \"default deny a/bad\"\n\t}"
	if got := nft.get(); !strings.Contains(got, want) || strings.Contains(got, "set p-") {
		t.Errorf("bad policy applied as:\n%s", got)
	}

	// The pod gets an address: it is isolated too.
	pending.Status.PodIP = "10.32.0.7"
	if _, err := client.CoreV1().Pods("a").UpdateStatus(ctx, pending, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(nft.get(), "10.32.0.7 : jump ingress-") {
			return fmt.Errorf("pending pod not isolated")
		}
		return nil
	})

	// Deleting the policy leaves no rule behind.
	if err := client.NetworkingV1().NetworkPolicies("a").Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	empty := Build(State{}).String()
	testnet.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := nft.get(); got != empty {
			return fmt.Errorf("after delete:\n%s", got)
		}
		return nil
	})
	if st := c.Status(); len(st) != 0 {
		t.Errorf("status after delete: %+v", st)
	}
}

func TestControllerIgnoresIrrelevantUpdates(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(append(objects(), mkPolicy("a", "deny", "", "Ingress", nil, nil))...)
	nft := &fakeNFT{}
	startController(t, client, nft)
	n := func() int { nft.mu.Lock(); defer nft.mu.Unlock(); return nft.applies }
	before := n()
	pod, err := client.CoreV1().Pods("a").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Annotations = map[string]string{"x": "y"}
	if _, err := client.CoreV1().Pods("a").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	np := mkPolicy("b", "other", "app=nothing", "Ingress", nil, nil)
	if _, err := client.NetworkingV1().NetworkPolicies("b").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := n(); got != before {
		t.Errorf("%d applies for changes that change no rule", got-before)
	}
}
