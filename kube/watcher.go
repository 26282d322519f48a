// Package kube connects the daemon to the Kubernetes API when it runs with
// --kube: Node objects name the peers to join, and a deleted Node is the
// authoritative word that a peer is gone for good.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
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

// NewClient returns a clientset from kubeconfig, or from the in-cluster
// service account when kubeconfig is empty.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("failed to load the in-cluster Kubernetes config (give --kubeconfig outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("failed to load kubeconfig %q: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = "mesh"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to create a Kubernetes client: %w", err)
	}
	return cs, nil
}

// Watcher follows the Node objects.
type Watcher struct {
	client  kubernetes.Interface
	log     *slog.Logger
	handler Handler
}

// NewWatcher returns a watcher that reports to h.
func NewWatcher(client kubernetes.Interface, log *slog.Logger, h Handler) *Watcher {
	return &Watcher{client: client, log: log, handler: h}
}

// Run watches until ctx ends. It returns an error if the node cache cannot
// be filled within a minute (no API, no permission).
func (w *Watcher) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(w.client, 10*time.Minute)
	inf := factory.Core().V1().Nodes().Informer()
	events := make(chan func(), 256)
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.updated(events, obj) },
		UpdateFunc: func(_, obj any) { w.updated(events, obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				name := n.Name
				events <- func() { w.handler.NodeDeleted(name) }
			}
		},
	})
	if err != nil {
		return fmt.Errorf("failed to watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
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

func (w *Watcher) updated(events chan<- func(), obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	node := FromObject(n)
	events <- func() { w.handler.NodeUpdated(node) }
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
