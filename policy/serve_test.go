package policy

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshnet/mesh/kube/kubetest"
)

// TestServeRetriesAfterFailure: while the API refuses to list pods, Run
// fails after its sync bound and Serve runs it again; once the API answers,
// the controller becomes ready; Serve returns when its context ends.
func TestServeRetriesAfterFailure(t *testing.T) {
	old := syncTimeout
	syncTimeout = 300 * time.Millisecond
	t.Cleanup(func() { syncTimeout = old })

	cs := fake.NewClientset()
	var refusals atomic.Int32
	var down atomic.Bool
	down.Store(true)
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			refusals.Add(1)
			return true, nil, errors.New("the API server is down")
		}
		return false, nil, nil
	})
	c := New(kubetest.Client(cs), testNode, testLogger(t), &fakeNFT{})
	c.RetryInterval = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { c.Serve(ctx); close(served) }()
	defer func() {
		cancel()
		select {
		case <-served:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return 30 s after its context ended")
		}
	}()

	// Two failed runs at least: the first and one retry.
	time.Sleep(2*syncTimeout + 3*c.RetryInterval)
	select {
	case <-c.Ready():
		t.Fatal("ready while the API refuses to list pods")
	default:
	}
	if refusals.Load() == 0 {
		t.Fatal("the API was never asked")
	}
	down.Store(false)
	select {
	case <-c.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("not ready 30 s after the API came back")
	}
}
