//go:build !mesh_omit_kube

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshnet/mesh/ipam"
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

// start runs, until d's context ends, the watch of the Node objects, the
// release of deleted Nodes' addresses and the NetworkPolicy controller.
func (k *kubeSource) start(d *Daemon) {
	d.goLoop("kube", k.watcher(d).Serve)
	r := newReleaser(k.client, k.self, k.log)
	d.goEvery("kube-release", releaseCheck, func(ctx context.Context) {
		allocs := make([]heldReleaser, 0, 2)
		for _, a := range d.allocators() {
			allocs = append(allocs, a)
		}
		r.round(ctx, time.Now(), d.members.Members(), allocs)
	})
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
	return min(time.Duration(removalRank(self, deleted, members))*removalStagger, removalStaggerMax)
}

// removalRank is self's rank among the live members other than deleted,
// in name order: 0 for the first.
func removalRank(self, deleted string, members []mesh.Member) int {
	rank := 0
	for _, m := range members {
		if m.Name != deleted && m.Name < self && m.State.Live() {
			rank++
		}
	}
	return rank
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

// A deleted Node's peer keeps its last known reservations after its
// removal (ipam: RemovePeerAuthoritative), since its pods may still run.
// They are released once the API lists none of its pods (the pod garbage
// collector deletes those of a deleted Node) and neither the Node again,
// and its daemon is no live member. Only the first releaseCheckers live
// nodes in name order ask the API, the k-th from k rounds after it first
// saw the peer, by which time the first release has usually reached it:
// a cluster of thousands of nodes must not list pods from every node
// every round while a deleted Node's pods linger. The others learn the
// release by gossip. Releases by several nodes write the same info, so
// the turns only save API requests and writes.
const (
	releaseCheck    = 30 * time.Second
	releaseCheckers = 3
)

// heldReleaser is the part of an *ipam.Allocator the release uses.
type heldReleaser interface {
	RemovedHolding() []string
	ReleaseRemovedHeld(name string) (int, error)
}

// releaser releases the reservations of deleted Nodes' peers whose pods
// are gone. round is called from one goroutine.
type releaser struct {
	client *kube.Client
	self   string
	log    *slog.Logger
	seen   map[string]time.Time // candidate -> when first seen; only candidates
}

func newReleaser(client *kube.Client, self string, log *slog.Logger) *releaser {
	return &releaser{client: client, self: self, log: log, seen: map[string]time.Time{}}
}

// round looks at every removed peer that still holds addresses, once.
func (r *releaser) round(ctx context.Context, now time.Time, members []mesh.Member, allocs []heldReleaser) {
	cands := map[string][]heldReleaser{}
	for _, a := range allocs {
		for _, name := range a.RemovedHolding() {
			cands[name] = append(cands[name], a)
		}
	}
	for name := range r.seen {
		if _, ok := cands[name]; !ok {
			delete(r.seen, name)
		}
	}
	live := map[string]bool{}
	for _, m := range members {
		live[m.Name] = m.State.Live()
	}
	for _, name := range slices.Sorted(maps.Keys(cands)) {
		if live[name] {
			continue // its daemon runs, so its pods may too
		}
		rank := removalRank(r.self, name, members)
		if rank >= releaseCheckers {
			continue
		}
		first, ok := r.seen[name]
		if !ok {
			first, r.seen[name] = now, now
		}
		if now.Sub(first) < time.Duration(rank)*releaseCheck {
			continue
		}
		why, err := r.blocked(ctx, name)
		if err != nil {
			r.log.Warn("failed to ask the Kubernetes API whether a deleted node's pods are gone", "node", name, "error", err)
			continue
		}
		if why != "" {
			r.log.Debug("the addresses of a deleted node's pods stay reserved", "node", name, "why", why)
			continue
		}
		for _, a := range cands[name] {
			n, err := a.ReleaseRemovedHeld(name)
			switch {
			case errors.Is(err, ipam.ErrNotYet):
				r.log.Debug("the addresses of a deleted node's pods stay reserved", "node", name, "why", err)
			case err != nil:
				r.log.Warn("failed to release the addresses of a deleted node's pods", "node", name, "error", err)
			case n > 0:
				r.log.Info("released the addresses of a deleted node's pods: the API lists none of them", "node", name, "addresses", n)
			}
		}
	}
}

// blocked says why the reservations of the deleted Node name must stay
// (its Node is back, or the API still lists pods on it), "" when none.
func (r *releaser) blocked(ctx context.Context, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nodes, err := r.client.Nodes.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		return "", fmt.Errorf("failed to list node %s: %w", name, err)
	}
	// The selector filters on the server; the check here keeps a client
	// that ignores it (the fake) from being read as "no such node".
	if slices.ContainsFunc(nodes.Items, func(n corev1.Node) bool { return n.Name == name }) {
		return "its Node exists again", nil
	}
	pods, err := r.client.Pods.List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + name})
	if err != nil {
		return "", fmt.Errorf("failed to list the pods of node %s: %w", name, err)
	}
	n := 0
	for _, p := range pods.Items {
		if p.Spec.NodeName == name {
			n++
		}
	}
	if n > 0 {
		return fmt.Sprintf("the API lists %d of its pods", n), nil
	}
	return "", nil
}
