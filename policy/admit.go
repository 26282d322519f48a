package policy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// claimTTL bounds how long an admitted address is kept for a pod whose API
// object never shows it (the kubelet normally writes it within seconds).
const claimTTL = 10 * time.Minute

// claim is an address this node gave a pod, known before the API shows it.
type claim struct {
	key   string // namespace/name
	since time.Time
}

// ErrNotSynced is returned by Admit while the controller has not built its
// table from the API.
var ErrNotSynced = errors.New("the NetworkPolicy controller has not synced with the Kubernetes API yet")

// Admit returns once the live table enforces the policies of pod
// namespace/name with address addr, which the node has just allocated to it
// (the API shows the address only after the CNI ADD, too late for rules
// keyed on it). Until then the pod must not get connectivity: the caller
// fails the ADD when Admit fails. Without a pod name (not a Kubernetes
// pod) it only waits until the controller has synced. It gives up when ctx
// ends, with an error saying what was missing.
func (c *Controller) Admit(ctx context.Context, namespace, name string, addr netip.Addr) error {
	select {
	case <-c.ready:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotSynced, ctx.Err())
	}
	if namespace == "" || name == "" {
		return nil
	}
	key := namespace + "/" + name
	c.mu.Lock()
	c.claims[addr] = claim{key: key, since: time.Now()}
	c.mu.Unlock()
	c.trigger()
	for {
		c.mu.Lock()
		done := c.covered[addr] == key
		applied := c.appliedCh
		c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-applied:
		case <-ctx.Done():
			c.mu.Lock()
			_, visible := c.visible[key]
			c.mu.Unlock()
			if !visible {
				return fmt.Errorf("pod %s not seen in the Kubernetes API, so its NetworkPolicies are unknown: %w", key, ctx.Err())
			}
			return fmt.Errorf("NetworkPolicy rules for pod %s (%s) not applied: %w", key, addr, ctx.Err())
		}
	}
}

// Forget drops the claim on addr (the address was released).
func (c *Controller) Forget(addr netip.Addr) {
	c.mu.Lock()
	_, ok := c.claims[addr]
	delete(c.claims, addr)
	c.mu.Unlock()
	if ok {
		c.trigger()
	}
}

// withClaims returns pods with the claimed addresses filled in for the
// pods that do not show them yet, and drops claims that are done (the API
// shows the address), stale, or whose pod is gone or finished. It also
// records which pods are visible. Call with c.mu held.
func (c *Controller) withClaims(pods []*corev1.Pod) []*corev1.Pod {
	byKey := make(map[string]int, len(pods))
	for i, p := range pods {
		byKey[p.Namespace+"/"+p.Name] = i
	}
	c.visible = make(map[string]struct{}, len(c.claims))
	now := time.Now()
	for addr, cl := range c.claims {
		i, ok := byKey[cl.key]
		if !ok {
			if now.Sub(cl.since) > claimTTL {
				delete(c.claims, addr)
			}
			continue
		}
		c.visible[cl.key] = struct{}{}
		p := pods[i]
		info := podInfoOf(p)
		switch {
		case info != nil && info.addr == addr:
			delete(c.claims, addr) // the API caught up
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil,
			now.Sub(cl.since) > claimTTL:
			delete(c.claims, addr)
		case info == nil || info.addr != addr:
			// No address yet, or the one of an earlier sandbox: this
			// node's allocation is the newer truth.
			q := p.DeepCopy()
			q.Status.PodIP = addr.String()
			q.Status.PodIPs = []corev1.PodIP{{IP: addr.String()}}
			pods[i] = q
		}
	}
	return pods
}

// addrsOf maps the addresses of pods that policies see to the pod that
// holds each (the one Build keeps, see holdsAddress).
func addrsOf(pods []*corev1.Pod) map[netip.Addr]string {
	holders := make(map[netip.Addr]*corev1.Pod, len(pods))
	for _, p := range pods {
		info := podInfoOf(p)
		if info == nil {
			continue
		}
		if q := holders[info.addr]; q == nil || holdsAddress(p, q) {
			holders[info.addr] = p
		}
	}
	out := make(map[netip.Addr]string, len(holders))
	for a, p := range holders {
		out[a] = p.Namespace + "/" + p.Name
	}
	return out
}
