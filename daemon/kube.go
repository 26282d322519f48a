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
)

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

func (h *kubeHandler) NodeDeleted(name string) {
	if name == h.self {
		h.log.Warn("this node's Node object was deleted")
		return
	}
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
	h.log.Info("reclaimed the ranges of a deleted node", "node", name, "ranges", n)
}
