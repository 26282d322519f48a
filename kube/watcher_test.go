package kube

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

type recorder struct {
	mu      sync.Mutex
	updated map[string]Node
	deleted []string
}

func (r *recorder) NodeUpdated(n Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updated[n.Name] = n
}

func (r *recorder) NodeDeleted(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleted = append(r.deleted, name)
}

func (r *recorder) snapshot() (map[string]Node, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := map[string]Node{}
	for k, v := range r.updated {
		u[k] = v
	}
	return u, append([]string(nil), r.deleted...)
}

func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24"}, Status: corev1.NodeStatus{Addresses: addrs}}
}

func TestWatcherReportsNodes(t *testing.T) {
	cs := fake.NewClientset(node("n1", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.11"}))
	rec := &recorder{updated: map[string]Node{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	client := &Client{Nodes: cs.CoreV1().Nodes(), NoWatchList: cs.IsWatchListSemanticsUnSupported()}
	go func() { done <- NewWatcher(client, slog.New(slog.NewTextHandler(io.Discard, nil)), rec).Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	wait := func(what string, cond func(map[string]Node, []string) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if cond(rec.snapshot()) {
				return
			}
		}
		u, d := rec.snapshot()
		t.Fatalf("timed out waiting for %s: updated %v deleted %v", what, u, d)
	}
	wait("n1", func(u map[string]Node, _ []string) bool {
		return u["n1"].InternalIP == netip.MustParseAddr("192.0.2.11")
	})
	_, err := cs.CoreV1().Nodes().Create(ctx, node("n2", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.12"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wait("n2", func(u map[string]Node, _ []string) bool { return u["n2"].InternalIP.IsValid() })
	if err := cs.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("n1 deleted", func(_ map[string]Node, d []string) bool { return len(d) == 1 && d[0] == "n1" })
}

func TestFromObjectPrefersIPv4InternalIP(t *testing.T) {
	tests := []struct {
		name  string
		addrs []corev1.NodeAddress
		want  string
	}{
		{"none", nil, "invalid IP"},
		{"external only", []corev1.NodeAddress{{Type: corev1.NodeExternalIP, Address: "198.51.100.1"}}, "invalid IP"},
		{"v6 then v4", []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "2001:db8::1"}, {Type: corev1.NodeInternalIP, Address: "192.0.2.1"}}, "192.0.2.1"},
		{"garbage", []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "not-an-ip"}}, "invalid IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FromObject(node("n", tt.addrs...)).InternalIP.String(); got != tt.want {
				t.Fatalf("InternalIP = %s, want %s", got, tt.want)
			}
		})
	}
}
