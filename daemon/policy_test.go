package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/kube/kubetest"
	"github.com/meshnet/mesh/policy"
)

// nopNFT is an Applier that programs nothing: the test is about when the
// daemon answers, not about the table.
type nopNFT struct{}

func (nopNFT) Apply(*policy.Ruleset) error          { return nil }
func (nopNFT) Counters() (map[string]uint64, error) { return nil, nil }
func (nopNFT) Remove() error                        { return nil }
func (nopNFT) Intact(*policy.Ruleset) (bool, error) { return true, nil }

// servePolicy runs c until the test ends and waits until it is ready.
func servePolicy(t *testing.T, c *policy.Controller) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("policy controller not ready after 30 s")
	}
}

// TestAllocateWaitsForPolicy: the daemon's ADD path (admitPolicy) against
// the policy controller fed by a fake API. Before the controller synced
// (right after a reboot) every ADD fails with a clear error; once synced,
// an ADD for a pod the API shows returns only when the rules cover the
// pod's new addresses (of both families in a dual-stack mesh), and one for
// a pod the API does not show fails.
func TestAllocateWaitsForPolicy(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node1"}, Status: corev1.PodStatus{Phase: corev1.PodPending}}
	client := fake.NewClientset(pod)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := policy.New(kubetest.Client(client), "node1", log, nopNFT{})
	d := &Daemon{cfg: Config{PolicyWait: 500 * time.Millisecond}, log: log, policy: c}
	addr := netip.MustParseAddr("10.32.0.7")
	req := api.AllocateRequest{ContainerID: "c1", IfName: "eth0", PodNamespace: "a", PodName: "web"}

	err := d.admitPolicy(context.Background(), req, []netip.Addr{addr})
	if err == nil || !strings.Contains(err.Error(), "refusing to wire a/web before its NetworkPolicy is enforced") || !strings.Contains(err.Error(), "not synced") {
		t.Fatalf("ADD before the controller synced: %v, want a clear refusal", err)
	}

	servePolicy(t, c)
	d.cfg.PolicyWait = 10 * time.Second
	if err := d.admitPolicy(context.Background(), req, []netip.Addr{addr}); err != nil {
		t.Fatalf("ADD of a visible pod: %v", err)
	}
	// A dual-stack ADD returns once the rules cover the IPv6 address too
	// (the zero address of a family the mesh does not run is ignored).
	dual := []netip.Addr{netip.MustParseAddr("10.32.0.10"), netip.MustParseAddr("fd32::10"), {}}
	if err := d.admitPolicy(context.Background(), api.AllocateRequest{ContainerID: "c4", IfName: "eth0", PodNamespace: "a", PodName: "web"}, dual); err != nil {
		t.Fatalf("dual-stack ADD of a visible pod: %v", err)
	}
	d.cfg.PolicyWait = 500 * time.Millisecond
	err = d.admitPolicy(context.Background(), api.AllocateRequest{ContainerID: "c2", IfName: "eth0", PodNamespace: "a", PodName: "ghost"}, []netip.Addr{netip.MustParseAddr("10.32.0.8")})
	if err == nil || !strings.Contains(err.Error(), "a/ghost not seen in the Kubernetes API") {
		t.Fatalf("ADD of a pod the API does not show: %v", err)
	}
	if err := d.admitPolicy(context.Background(), api.AllocateRequest{ContainerID: "c3", IfName: "eth0"}, []netip.Addr{netip.MustParseAddr("10.32.0.9")}); err != nil {
		t.Fatalf("ADD of a non-Kubernetes container once synced: %v", err)
	}
}
