package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshnet/mesh/internal/testnet"
	"github.com/meshnet/mesh/kube/kubetest"
	"github.com/meshnet/mesh/mesh"
)

// loopbackMember starts a membership named name on 127.0.0.1 (a free port
// memberlist picks), advertising pub as its WireGuard key, joining targets.
func loopbackMember(t *testing.T, name, pub string, targets ...string) *mesh.Membership {
	t.Helper()
	cfg := mesh.DefaultConfig()
	cfg.Name = name
	cfg.Meta = mesh.Meta{PeerID: fmt.Sprintf("%032x", len(name)), PublicKey: pub, DPPort: 6784}
	cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.Port = 0
	cfg.Targets = targets
	cfg.RetryMin, cfg.RetryMax, cfg.RejoinSpread = 100*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
	cfg.RememberedFile = filepath.Join(t.TempDir(), "peers.json")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := mesh.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	m.Start()
	return m
}

// TestReconcileLoopFollowsMembership: the reconcile loop, on a real
// membership over loopback and the fake data plane, gives a peer that joins
// a WireGuard peer and takes it away once the peer has left, and reports
// progress for /healthz.
func TestReconcileLoopFollowsMembership(t *testing.T) {
	d, dp := testDaemon(t)
	d.kick = make(chan struct{}, 1)
	d.members = loopbackMember(t, "n1", publicKey(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.reconcileLoop(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	pubB := publicKey(t)
	b := loopbackMember(t, "b", pubB, d.members.LocalAddr().String())
	testnet.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		cfg := dp.Current()
		if cfg == nil || len(cfg.Peers) != 1 {
			return fmt.Errorf("data plane config %+v, want one peer for b", cfg)
		}
		if got := cfg.Peers[0]; got.PublicKey.String() != pubB || got.Endpoint != netip.MustParseAddrPort("127.0.0.1:6784") {
			return fmt.Errorf("peer %v at %v, want b's key at 127.0.0.1:6784", got.PublicKey, got.Endpoint)
		}
		return nil
	})
	if err := d.health.check(time.Now()); err != nil {
		t.Errorf("health after passes of the loop: %v", err)
	}
	d.health.mu.Lock()
	_, beat := d.health.last[loopReconcile]
	d.health.mu.Unlock()
	if !beat {
		t.Errorf("the reconcile loop never reported progress")
	}

	if err := b.Leave(5 * time.Second); err != nil {
		t.Fatalf("b leaving: %v", err)
	}
	testnet.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		if cfg := dp.Current(); len(cfg.Peers) != 0 {
			return fmt.Errorf("b left but the data plane still has %d peers", len(cfg.Peers))
		}
		return nil
	})
}

// TestKubeNodeJoinsAndGetsAPeer: with --kube, a Node object in the API (a
// fake one) is enough for this node to join its daemon, and the reconcile
// loop then gives it a WireGuard peer: kube watcher, membership and data
// plane wired as Start wires them.
func TestKubeNodeJoinsAndGetsAPeer(t *testing.T) {
	d, dp := testDaemon(t)
	d.kick = make(chan struct{}, 1)
	d.members = loopbackMember(t, "n1", publicKey(t))
	pubB := publicKey(t)
	b := loopbackMember(t, "b", pubB) // knows no one: n1 must join it
	d.cfg.Port = int(b.LocalAddr().Port())

	cs := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}}},
	)
	ks := &kubeSource{client: kubetest.Client(cs), self: "n1", log: d.log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { ks.watcher(d).Serve(ctx); done <- struct{}{} }()
	go func() { d.reconcileLoop(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })

	testnet.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		cfg := dp.Current()
		if cfg == nil || len(cfg.Peers) != 1 || cfg.Peers[0].PublicKey.String() != pubB {
			return fmt.Errorf("data plane config %+v, want one peer with b's key", cfg)
		}
		return nil
	})
}
