package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/policy"
)

// podPolicy is NetworkPolicy as the daemon uses it: a *policy.Controller
// with --kube, else noPolicy. Safe for concurrent use; Serve blocks until
// its context ends, Admit until the pod's rules are in place or its
// context ends, the others do not block.
type podPolicy interface {
	Serve(ctx context.Context)
	Ready() <-chan struct{}
	Admit(ctx context.Context, namespace, name string, addrs []netip.Addr) error
	Forget(addr netip.Addr)
	Status() []policy.PolicyStatus
	DeniedPackets() map[string]uint64
	Restores() int64
}

// noPolicy is the policy of a node without NetworkPolicy enforcement
// (without --kube, or with --no-policy): always ready, admits every pod.
type noPolicy struct{}

// closed is a channel that is always ready to receive.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (noPolicy) Serve(ctx context.Context)                                 { <-ctx.Done() }
func (noPolicy) Ready() <-chan struct{}                                    { return closed }
func (noPolicy) Admit(context.Context, string, string, []netip.Addr) error { return nil }
func (noPolicy) Forget(netip.Addr)                                         {}
func (noPolicy) Status() []policy.PolicyStatus                             { return nil }
func (noPolicy) DeniedPackets() map[string]uint64                          { return nil }
func (noPolicy) Restores() int64                                           { return 0 }

// policyReady reports whether pods may be served as far as policy goes:
// the table must be rebuilt from the API first, or a restarted node would
// let a new pod talk before its policies apply.
func (d *Daemon) policyReady() bool {
	select {
	case <-d.policy.Ready():
		return true
	default:
		return false
	}
}

// admitPolicy waits (at most --policy-wait) until the NetworkPolicy rules
// of the pod being added cover its addresses (the invalid ones, of a
// family the mesh does not run, are ignored).
func (d *Daemon) admitPolicy(ctx context.Context, req api.AllocateRequest, addrs []netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.PolicyWait)
	defer cancel()
	start := time.Now()
	if err := d.policy.Admit(ctx, req.PodNamespace, req.PodName, addrs); err != nil {
		pod := req.PodNamespace + "/" + req.PodName
		if req.PodName == "" {
			pod = "container " + req.ContainerID
		}
		return fmt.Errorf("refusing to wire %s before its NetworkPolicy is enforced (waited %v, --policy-wait): %w", pod, d.cfg.PolicyWait, err)
	}
	if took := time.Since(start); took > time.Second {
		d.log.Info("pod waited for its NetworkPolicy rules", "pod", req.PodNamespace+"/"+req.PodName, "addresses", addrs, "took", took.Round(time.Millisecond))
	}
	return nil
}

func (d *Daemon) policyStatus() []api.PolicyStatus {
	denied := d.policy.DeniedPackets()
	var out []api.PolicyStatus
	for _, p := range d.policy.Status() {
		out = append(out, api.PolicyStatus{
			Namespace: p.Namespace, Name: p.Name, Types: p.Types, Pods: p.Pods,
			DeniedPackets: denied[p.Namespace+"/"+p.Name], Warnings: p.Warnings,
		})
	}
	return out
}
