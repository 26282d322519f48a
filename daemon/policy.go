package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/policy"
)

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
	d.goLoop("policy", func(ctx context.Context) {
		for ctx.Err() == nil {
			if err := d.policy.Run(ctx); err != nil {
				d.log.Error("NetworkPolicy controller stopped; retrying", "error", err)
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Second):
				}
			}
		}
	})
}

// policyReady reports whether pods may be served as far as policy goes:
// the table must be rebuilt from the API first, or a restarted node would
// let a new pod talk before its policies apply.
func (d *Daemon) policyReady() bool {
	if d.policy == nil {
		return true
	}
	select {
	case <-d.policy.Ready():
		return true
	default:
		return false
	}
}

// admitPolicy waits (at most --policy-wait) until the NetworkPolicy rules
// of the pod being added cover its address; no-op without policy.
func (d *Daemon) admitPolicy(ctx context.Context, req api.AllocateRequest, addr netip.Addr) error {
	if d.policy == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.PolicyWait)
	defer cancel()
	start := time.Now()
	if err := d.policy.Admit(ctx, req.PodNamespace, req.PodName, addr); err != nil {
		pod := req.PodNamespace + "/" + req.PodName
		if req.PodName == "" {
			pod = "container " + req.ContainerID
		}
		return fmt.Errorf("refusing to wire %s before its NetworkPolicy is enforced (waited %v, --policy-wait): %w", pod, d.cfg.PolicyWait, err)
	}
	if took := time.Since(start); took > time.Second {
		d.log.Info("pod waited for its NetworkPolicy rules", "pod", req.PodNamespace+"/"+req.PodName, "address", addr, "took", took.Round(time.Millisecond))
	}
	return nil
}

func (d *Daemon) policyStatus() []api.PolicyStatus {
	if d.policy == nil {
		return nil
	}
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
