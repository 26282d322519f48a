//go:build !mesh_omit_kube

package policy

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshnet/mesh/kube"
)

// informers are the caches the controller builds its ruleset from. They
// are made directly rather than by the informer factory of client-go,
// which links every API group into the daemon.
type informers struct {
	pods, namespaces, policies cache.SharedIndexInformer
}

func newInformers(client *kube.Client) (*informers, error) {
	inf := &informers{
		pods:       kube.NewInformer(client, client.Pods, &corev1.Pod{}, 0),
		namespaces: kube.NewInformer(client, client.Namespaces, &corev1.Namespace{}, 0),
		policies:   kube.NewInformer(client, client.NetworkPolicies, &networkingv1.NetworkPolicy{}, 0),
	}
	for _, i := range inf.all() {
		if err := i.inf.SetTransform(stripManagedFields); err != nil {
			return nil, fmt.Errorf("failed to watch %s: %w", i.what, err)
		}
	}
	if err := inf.pods.SetTransform(slimPod); err != nil {
		return nil, fmt.Errorf("failed to watch pods: %w", err)
	}
	return inf, nil
}

// slimPod keeps of a pod what the controller reads (podInfoOf,
// holdsAddress, podChanged, Admit): every pod of the cluster is in the
// cache, and a pod's spec and status are mostly what policies never look
// at (environment, volumes, probes, conditions, annotations), several KB
// each.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return stripManagedFields(obj) // a deletion tombstone
	}
	out := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	for _, c := range p.Spec.Containers {
		out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
	}
	return out, nil
}

type namedInformer struct {
	inf  cache.SharedIndexInformer
	what string
}

func (inf *informers) all() []namedInformer {
	return []namedInformer{{inf.pods, "pods"}, {inf.namespaces, "namespaces"}, {inf.policies, "network policies"}}
}

// run runs the informers until ctx ends; the returned function waits
// for them to stop.
func (inf *informers) run(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, i := range inf.all() {
		wg.Go(func() { i.inf.RunWithContext(ctx) })
	}
	return wg.Wait
}

// waitForSync waits until the caches are filled or ctx ends, and returns
// what is not synced yet.
func (inf *informers) waitForSync(ctx context.Context) []string {
	var synced []cache.InformerSynced
	for _, i := range inf.all() {
		synced = append(synced, i.inf.HasSynced)
	}
	if cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	var missing []string
	for _, i := range inf.all() {
		if !i.inf.HasSynced() {
			missing = append(missing, i.what)
		}
	}
	return missing
}

// stripManagedFields keeps the caches small.
func stripManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

// listAll returns the objects of a cache.
func listAll[T any](s cache.Store) []T {
	objs := s.List()
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}
