//go:build !mesh_omit_kube

package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshnet/mesh/kube"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/policy"
)

// KubeSupport says this build runs --kube itself. A build with the tag
// mesh_omit_kube (make build's mesh) leaves the Kubernetes client out,
// which saves an idle daemon about 5 MiB (docs/performance.md, "Idle
// memory"); its CLI runs mesh-kube for --kube.
const KubeSupport = true

// kubeSource takes peers from Node objects and treats a deleted Node as
// the authoritative end of a peer.
type kubeSource struct {
	client *kube.Client
	self   string
	log    *slog.Logger
	nodes  int
}

func newKubeSource(ctx context.Context, cfg Config, self string, log *slog.Logger) (*kubeSource, error) {
	cs, err := kube.NewClient(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := cs.Nodes.List(lctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to list Kubernetes nodes (check the API address and RBAC: nodes get/list/watch): %w", err)
	}
	return &kubeSource{client: cs, self: self, log: log, nodes: len(list.Items)}, nil
}

// initialPeers is the IPAM's bootstrap quorum base: the nodes that exist
// when this daemon starts.
func (k *kubeSource) initialPeers() int { return max(k.nodes, 1) }

// watcher follows the Node objects for d until its context ends.
func (k *kubeSource) watcher(d *Daemon) *kube.Watcher {
	return kube.NewWatcher(k.client, k.log, &kubeHandler{d: d, self: k.self, log: k.log})
}

// start runs, until d's context ends, the watch of the Node objects and
// the NetworkPolicy controller.
func (k *kubeSource) start(d *Daemon) {
	d.goLoop("kube", k.watcher(d).Serve)
	d.startPolicy(k)
}

// startPolicy runs the NetworkPolicy controller for this node's pods. It
// needs the Kubernetes API, so it runs only with --kube.
func (d *Daemon) startPolicy(kube *kubeSource) {
	if d.cfg.NoPolicy {
		// Turning policy off must not leave an old table enforcing.
		if err := policy.NewNFT().Remove(); err != nil {
			d.log.Warn("failed to remove the NetworkPolicy table", "error", err)
		}
		return
	}
	d.policy = policy.New(kube.client, d.id.Name, d.log, policy.NewNFT())
	d.goLoop("policy", d.policy.Serve)
}

type kubeHandler struct {
	d    *Daemon
	self string
	log  *slog.Logger
}

func (h *kubeHandler) NodeUpdated(n kube.Node) {
	if n.Name == h.self || !n.InternalIP.IsValid() {
		return
	}
	h.d.members.Connect(net.JoinHostPort(n.InternalIP.String(), strconv.Itoa(h.d.cfg.Port)))
}

// Every node's watcher sees a Node deletion at about the same time. Had
// each removed the peer at once, each would broadcast its whole IPAM state:
// N² whole states, ~83·N³ bytes (80 MB across 100 nodes, 2.2 GB across
// 300: docs/scale.md). So the nodes take turns by name: the first live
// node removes the peer at once, the k-th waits k·removalStagger (at most
// removalStaggerMax), by which time the first removal has usually reached
// it and its own is a no-op (ipam: RemovePeerAuthoritative). A removal by
// several nodes is as safe as by one (they write the same tombstones), so
// the turns only save bytes: if the first node is cut off, the next ones
// still remove the peer.
const (
	removalStagger    = 2 * time.Second
	removalStaggerMax = time.Minute
)

// removalTurn is how long self waits before removing the peer of the
// deleted Node: its rank among the live members other than deleted, in
// name order, times removalStagger, capped.
func removalTurn(self, deleted string, members []mesh.Member) time.Duration {
	rank := 0
	for _, m := range members {
		if m.Name != deleted && m.Name < self && m.State.Live() {
			rank++
		}
	}
	return min(time.Duration(rank)*removalStagger, removalStaggerMax)
}

func (h *kubeHandler) NodeDeleted(name string) {
	if name == h.self {
		h.log.Warn("this node's Node object was deleted")
		return
	}
	wait := removalTurn(h.self, name, h.d.members.Members())
	if wait == 0 {
		h.removeDeleted(name)
		return
	}
	h.log.Info("a Node was deleted: its peer is removed by the first live node in name order, here after", "node", name, "wait", wait)
	h.d.goLoop("node-removal", func(ctx context.Context) {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			h.removeDeleted(name)
		}
	})
}

// removeDeleted removes the peer of a deleted Node from each allocator
// that knows it.
func (h *kubeHandler) removeDeleted(name string) {
	n := 0
	for _, a := range h.d.allocators() {
		if a != h.d.ipam && !knowsPeer(a, name) {
			continue // a node that never ran this family
		}
		m, err := a.RemovePeerAuthoritative(name)
		if err != nil {
			h.log.Error("failed to reclaim the ranges of a deleted node", "node", name, "range", a.Status().Range, "error", err)
			continue
		}
		n += m
	}
	if n == 0 {
		h.log.Info("the peer of a deleted node was already removed", "node", name)
		return
	}
	h.log.Info("reclaimed the ranges of a deleted node", "node", name, "ranges", n)
}
