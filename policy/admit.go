//go:build !mesh_omit_kube

package policy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
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
// namespace/name with addresses addrs (one per family; invalid ones are
// ignored), which the node has just allocated to it (the API shows the
// addresses only after the CNI ADD, too late for rules keyed on them).
// Until then the pod must not get connectivity: the caller fails the ADD
// when Admit fails. Without a pod name (not a Kubernetes pod) it only
// waits until the controller has synced. It gives up when ctx ends, with
// an error saying what was missing.
func (c *Controller) Admit(ctx context.Context, namespace, name string, addrs []netip.Addr) error {
	select {
	case <-c.ready:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotSynced, ctx.Err())
	}
	addrs = slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return !a.IsValid() })
	if namespace == "" || name == "" || len(addrs) == 0 {
		return nil
	}
	key := namespace + "/" + name
	c.mu.Lock()
	now := time.Now()
	for _, a := range addrs {
		c.claims[a] = claim{key: key, since: now}
	}
	c.mu.Unlock()
	c.trigger()
	for {
		c.mu.Lock()
		done := !slices.ContainsFunc(addrs, func(a netip.Addr) bool { return c.covered[a] != key })
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
			return fmt.Errorf("NetworkPolicy rules for pod %s (%s) not applied: %w", key, joinAddrs(addrs), ctx.Err())
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

func joinAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
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
	fill := map[int][]netip.Addr{} // pod index -> claimed addresses to show
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
		case info != nil && slices.Contains(info.addrs, addr):
			delete(c.claims, addr) // the API caught up
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.DeletionTimestamp != nil,
			now.Sub(cl.since) > claimTTL:
			delete(c.claims, addr)
		default:
			// No address of this family yet, or the one of an earlier
			// sandbox: this node's allocation is the newer truth.
			fill[i] = append(fill[i], addr)
		}
	}
	for i, claimed := range fill {
		// The newest claim of a family first (podInfoOf takes the first
		// of each family), then the API's addresses of the families
		// without a claim.
		slices.SortFunc(claimed, func(a, b netip.Addr) int {
			return cmp.Or(c.claims[b].since.Compare(c.claims[a].since), a.Compare(b))
		})
		addrs := claimed
		if info := podInfoOf(pods[i]); info != nil {
			for _, a := range info.addrs {
				if !slices.ContainsFunc(claimed, func(b netip.Addr) bool { return familyOf(a) == familyOf(b) }) {
					addrs = append(addrs, a)
				}
			}
		}
		q := pods[i].DeepCopy()
		q.Status.PodIP = addrs[0].String()
		q.Status.PodIPs = nil
		for _, a := range addrs {
			q.Status.PodIPs = append(q.Status.PodIPs, corev1.PodIP{IP: a.String()})
		}
		pods[i] = q
	}
	return pods
}

// addrsOf maps the addresses of pods that policies see to the pod that
// holds each (the pods Build keeps, see holders).
func addrsOf(pods []*corev1.Pod) map[netip.Addr]string {
	out := make(map[netip.Addr]string, len(pods))
	for _, h := range holders(pods) {
		for _, a := range h.info.addrs {
			out[a] = h.info.key
		}
	}
	return out
}
