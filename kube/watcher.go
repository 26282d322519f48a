// Package kube connects the daemon to the Kubernetes API when it runs with
// --kube: Node objects name the peers to join, and a deleted Node is the
// authoritative word that a peer is gone for good.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Node is what the daemon needs of a Kubernetes Node.
type Node struct {
	Name       string
	InternalIP netip.Addr // zero when the node has none yet
	PodCIDR    string
}

// Handler receives node events. Its methods are called one at a time from
// the watcher's goroutine and must not block for long.
type Handler interface {
	NodeUpdated(n Node)
	NodeDeleted(name string)
}

// Watcher follows the Node objects.
type Watcher struct {
	client  *Client
	log     *slog.Logger
	handler Handler
}

// NewWatcher returns a watcher that reports to h.
func NewWatcher(client *Client, log *slog.Logger, h Handler) *Watcher {
	return &Watcher{client: client, log: log, handler: h}
}

// Run watches until ctx ends. It returns an error if the node cache cannot
// be filled within a minute (no API, no permission).
func (w *Watcher) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx) // stops the informer when Run returns
	defer stop()
	inf := NewInformer(w.client, w.client.Nodes, &corev1.Node{}, 10*time.Minute)
	events := make(chan func(), 256)
	send := func(f func()) {
		select {
		case events <- f:
		case <-ctx.Done(): // Run no longer reads events: let the informer stop
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.updated(send, obj) },
		UpdateFunc: func(_, obj any) { w.updated(send, obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				name := n.Name
				send(func() { w.handler.NodeDeleted(name) })
			}
		},
	})
	if err != nil {
		return fmt.Errorf("failed to watch nodes: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop() // before wg.Wait
	wg.Go(func() { inf.RunWithContext(ctx) })
	syncCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), inf.HasSynced) {
		return fmt.Errorf("failed to list nodes from the Kubernetes API within a minute (check RBAC: nodes get/list/watch)")
	}
	w.log.Info("watching Kubernetes nodes")
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-events:
			f()
		}
	}
}

func (w *Watcher) updated(send func(func()), obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	node := FromObject(n)
	send(func() { w.handler.NodeUpdated(node) })
}

// FromObject extracts what the daemon needs from a Node.
func FromObject(n *corev1.Node) Node {
	out := Node{Name: n.Name, PodCIDR: n.Spec.PodCIDR}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && (!out.InternalIP.IsValid() || ip.Is4() && !out.InternalIP.Is4()) {
			out.InternalIP = ip
		}
	}
	return out
}
