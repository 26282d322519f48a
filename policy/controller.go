//go:build !mesh_omit_kube

package policy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshnet/mesh/kube"
)

// syncTimeout bounds the first listing of pods, namespaces and policies.
var syncTimeout = time.Minute // a variable for tests

// DefaultCheckInterval is how often the live table is compared with the
// applied one, so an outside change (`nft flush ruleset`) is repaired.
const DefaultCheckInterval = 5 * time.Second

// Retry delays after a failed apply.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 10 * time.Second
)

// Controller enforces the NetworkPolicies of the cluster for the pods of
// one node. Its methods are safe for concurrent use.
type Controller struct {
	client *kube.Client
	node   string
	log    *slog.Logger
	nft    Applier

	// CheckInterval is how often the live table is checked (set before
	// Run; 0 means DefaultCheckInterval).
	CheckInterval time.Duration
	// RetryInterval is how long Serve waits before running again after
	// Run failed (set before Serve; 0 means kube.DefaultRetryInterval).
	RetryInterval time.Duration

	kick      chan struct{}
	ready     chan struct{}
	readyOnce sync.Once

	// The caches of the running informers, nil before Run.
	pods, nss, policies cache.Store

	mu       sync.Mutex
	applied  *Ruleset // nil until the first apply
	stale    bool     // program the table at the next Sync even if unchanged
	warned   map[string]string
	restores int64 // tables found changed and restored

	// Admission (see Admit): addresses given to pods the API does not
	// show with them yet; the pods behind the addresses of the rules in
	// place; the pods of claims seen in the cache; closed and replaced
	// after every Sync.
	claims    map[netip.Addr]claim
	covered   map[netip.Addr]string
	visible   map[string]struct{}
	appliedCh chan struct{}
}

// New returns a controller for the pods of node. It does nothing until Run.
func New(client *kube.Client, node string, log *slog.Logger, nft Applier) *Controller {
	return &Controller{
		client: client,
		node:   node,
		log:    log.With("component", "policy"),
		nft:    nft,
		kick:   make(chan struct{}, 1),
		ready:  make(chan struct{}),
		warned: map[string]string{},

		claims:    map[netip.Addr]claim{},
		covered:   map[netip.Addr]string{},
		visible:   map[string]struct{}{},
		appliedCh: make(chan struct{}),
	}
}

// Ready is closed once the table has been built from the API after the
// informers' caches synced.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

// Serve runs the controller until ctx ends, which it blocks for: Run, and
// when Run fails (an API server unreachable for a minute), the error logged
// and Run again after RetryInterval (kube.Serve). The table stays in place
// meanwhile.
func (c *Controller) Serve(ctx context.Context) {
	kube.Serve(ctx, c.log, "NetworkPolicy controller stopped; retrying", c.RetryInterval, c.Run)
}

// Run watches the API and keeps the table in step until ctx ends; it leaves
// the table in place (enforcement outlives a daemon restart: see Remove).
// It returns an error if the caches cannot be filled within a minute.
func (c *Controller) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx) // stops the informers when Run returns
	defer stop()
	inf, err := newInformers(c.client)
	if err != nil {
		return err
	}
	c.pods, c.nss, c.policies = inf.pods.GetStore(), inf.namespaces.GetStore(), inf.policies.GetStore()
	other := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.trigger() },
		UpdateFunc: func(any, any) { c.trigger() },
		DeleteFunc: func(any) { c.trigger() },
	}
	pod := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.trigger() },
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(*corev1.Pod)
			n, ok2 := cur.(*corev1.Pod)
			if !ok1 || !ok2 || podChanged(o, n) {
				c.trigger()
			}
		},
		DeleteFunc: func(any) { c.trigger() },
	}
	for _, h := range []struct {
		inf  cache.SharedIndexInformer
		h    cache.ResourceEventHandler
		what string
	}{{inf.pods, pod, "pods"}, {inf.namespaces, other, "namespaces"}, {inf.policies, other, "network policies"}} {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return fmt.Errorf("failed to watch %s: %w", h.what, err)
		}
	}
	wait := inf.run(ctx)
	defer wait()
	defer stop() // before wait
	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	if missing := inf.waitForSync(syncCtx); missing != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("failed to list %s from the Kubernetes API within %v (check RBAC: pods, namespaces, networkpolicies get/list/watch)", strings.Join(missing, ", "), syncTimeout)
	}
	c.log.Info("enforcing network policies", "node", c.node)
	// The first apply of a Run programs the whole table: whatever the
	// table holds now (changed while no Run watched it) is replaced.
	if f, ok := c.nft.(interface{ RewriteNext() }); ok {
		f.RewriteNext()
	}
	c.mu.Lock()
	c.stale = true
	c.mu.Unlock()
	c.trigger()
	retry := time.NewTimer(0)
	retry.Stop()
	delay := retryMin
	every := c.CheckInterval
	if every <= 0 {
		every = DefaultCheckInterval
	}
	check := time.NewTicker(every)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			retry.Stop()
			return nil
		case <-c.kick:
		case <-retry.C:
		case <-check.C:
			if !c.checkTable() {
				continue // intact: no rebuild
			}
		}
		if err := c.Sync(); err != nil {
			c.log.Error("failed to apply network policies, retrying", "err", err, "in", delay)
			retry.Reset(delay)
			delay = min(2*delay, retryMax)
			continue
		}
		delay = retryMin
		c.readyOnce.Do(func() { close(c.ready) })
	}
}

// checkTable compares the live table with the applied ruleset and, if
// something outside changed it, forgets the applied one so the next Sync
// programs it again; it reports whether it did.
func (c *Controller) checkTable() bool {
	c.mu.Lock()
	rs := c.applied
	c.mu.Unlock()
	if rs == nil {
		return false
	}
	ok, err := c.nft.Intact(rs)
	if err != nil {
		c.log.Warn("failed to check the network policy table", "err", err)
		return false
	}
	if ok {
		return false
	}
	c.log.Warn("the network policy table was changed or deleted outside mesh; restoring it", "table", "inet "+TableName)
	c.mu.Lock()
	c.restores++
	c.stale = true // Sync applies again
	c.mu.Unlock()
	return true
}

// Restores counts the times the table was found changed and restored.
func (c *Controller) Restores() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restores
}

// markApplied records that the rules in place are those for pods, and
// wakes Admit.
func (c *Controller) markApplied(pods []*corev1.Pod) {
	covered := addrsOf(pods)
	c.mu.Lock()
	c.covered = covered
	close(c.appliedCh)
	c.appliedCh = make(chan struct{})
	c.mu.Unlock()
}

func (c *Controller) trigger() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Sync rebuilds the ruleset from the caches and applies it if it changed.
// Run calls it on every relevant change; it must not be called before Run
// synced the caches.
func (c *Controller) Sync() error {
	if c.pods == nil {
		return fmt.Errorf("policy controller not running")
	}
	pods := listAll[*corev1.Pod](c.pods)
	c.mu.Lock()
	pods = c.withClaims(pods)
	c.mu.Unlock()
	st := State{
		Node:       c.node,
		Pods:       pods,
		Namespaces: listAll[*corev1.Namespace](c.nss),
		Policies:   listAll[*networkingv1.NetworkPolicy](c.policies),
	}
	start := time.Now()
	rs := Build(st)
	c.logWarnings(rs)
	c.mu.Lock()
	prev, stale := c.applied, c.stale
	c.mu.Unlock()
	// Compared as the change it would make (cheaper than rendering the
	// text of a table of tens of thousands of elements).
	if prev != nil && !stale && diffRulesets(prev, rs).empty() {
		c.mu.Lock()
		c.applied = rs // the same table; the status may differ
		c.mu.Unlock()
		c.markApplied(pods)
		return nil
	}
	if err := c.nft.Apply(rs); err != nil {
		return err
	}
	c.mu.Lock()
	c.applied, c.stale = rs, false
	c.mu.Unlock()
	c.markApplied(pods)
	c.log.Debug("applied network policies", "policies", len(rs.Policies), "pods", len(rs.Ingress)+len(rs.Egress),
		"chains", len(rs.Chains), "sets", len(rs.Sets), "took", time.Since(start))
	return nil
}

// logWarnings logs the warnings of a policy when they change.
func (c *Controller) logWarnings(rs *Ruleset) {
	seen := map[string]bool{}
	for _, p := range rs.Policies {
		key := p.Namespace + "/" + p.Name
		seen[key] = true
		w := strings.Join(p.Warnings, "; ")
		if c.warned[key] == w {
			continue
		}
		c.warned[key] = w
		for _, msg := range p.Warnings {
			c.log.Warn("invalid network policy part skipped: it allows nothing", "policy", key, "problem", msg)
		}
	}
	for key := range c.warned {
		if !seen[key] {
			delete(c.warned, key)
		}
	}
}

// podChanged reports whether an update changed anything policies depend on.
func podChanged(o, n *corev1.Pod) bool {
	return o.Spec.NodeName != n.Spec.NodeName ||
		o.Spec.HostNetwork != n.Spec.HostNetwork ||
		o.Status.Phase != n.Status.Phase ||
		o.Status.PodIP != n.Status.PodIP ||
		(o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil) ||
		!reflect.DeepEqual(o.Labels, n.Labels) ||
		!reflect.DeepEqual(o.Status.PodIPs, n.Status.PodIPs) ||
		!reflect.DeepEqual(containerPorts(o), containerPorts(n))
}

func containerPorts(p *corev1.Pod) [][]corev1.ContainerPort {
	var out [][]corev1.ContainerPort
	for _, c := range p.Spec.Containers {
		out = append(out, c.Ports)
	}
	return out
}

// Status lists the policies that select pods of this node (and those with
// invalid parts), sorted by namespace and name.
func (c *Controller) Status() []PolicyStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied == nil {
		return []PolicyStatus{}
	}
	return slices.Clone(c.applied.Policies)
}

// Stats are the packets dropped since the table was made.
type Stats struct {
	// Policies counts drops by policy, "namespace/name", for pods isolated
	// (in that direction) by that policy only.
	Policies map[string]uint64 `json:"policies"`
	// Pods counts drops by pod, "namespace/name", for pods isolated by
	// several policies: such a drop is no single policy's.
	Pods map[string]uint64 `json:"pods"`
}

// Stats reads the counters of the table.
func (c *Controller) Stats() (Stats, error) {
	st := Stats{Policies: map[string]uint64{}, Pods: map[string]uint64{}}
	c.mu.Lock()
	rs := c.applied
	c.mu.Unlock()
	if rs == nil {
		return st, nil
	}
	vals, err := c.nft.Counters()
	if err != nil {
		return st, fmt.Errorf("failed to read policy counters: %w", err)
	}
	for _, ctr := range rs.Counters {
		switch ctr.Kind {
		case CounterPolicy:
			st.Policies[ctr.Key] = vals[ctr.Name]
		case CounterPod:
			st.Pods[ctr.Key] = vals[ctr.Name]
		}
	}
	return st, nil
}

// DeniedPackets returns Stats().Policies, or nil if the counters cannot be
// read (logged).
func (c *Controller) DeniedPackets() map[string]uint64 {
	st, err := c.Stats()
	if err != nil {
		c.log.Warn("failed to read policy counters", "err", err)
		return nil
	}
	return st.Policies
}
