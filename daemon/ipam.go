package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/control"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/isolation"
	"github.com/meshnet/mesh/mesh"
)

// ipamChannel lets the allocator ride on the gossip layer. It is registered
// before the allocator exists (the allocator needs the channel's sender),
// so it forwards to an atomically set allocator and drops until then.
type ipamChannel struct {
	a atomic.Pointer[ipam.Allocator]
}

func (c *ipamChannel) LocalState() []byte {
	if a := c.a.Load(); a != nil {
		return a.LocalState()
	}
	return nil
}

func (c *ipamChannel) MergeRemoteState(b []byte) error {
	if a := c.a.Load(); a != nil && len(b) > 0 {
		return quietRefusal(a.MergeRemoteState(b))
	}
	return nil
}

func (c *ipamChannel) HandleMessage(from string, msg []byte) error {
	if a := c.a.Load(); a != nil {
		return quietRefusal(a.HandleMessage(from, msg))
	}
	return nil
}

// quietRefusal drops the errors of input refused by a bound: the IPAM
// counts them, names them in status and logs the first of each reason, so
// a flood of them does not flood the log through the gossip layer too.
func quietRefusal(err error) error {
	if errors.Is(err, ipam.ErrRejected) {
		return nil
	}
	return err
}

func (d *Daemon) startIPAM(initialPeers int, signKey ed25519.PrivateKey) error {
	ch := &ipamChannel{}
	sender, err := d.members.Register(mesh.ChannelIPAM, ch)
	if err != nil {
		return err
	}
	cfg := ipam.DefaultConfig()
	cfg.Range = d.cfg.IPAllocRange
	cfg.Self = d.id.Name
	cfg.SelfID = d.id.PeerID
	cfg.StateFile = d.cfg.path("ipam.json")
	cfg.InitialPeerCount = initialPeers
	cfg.ReclaimAfter = d.cfg.ReclaimAfter
	cfg.Logger = d.log
	cfg.IsMember = d.members.IsMember
	cfg.Identities = &ipamIdentities{self: d.id.Name, key: signKey, members: d.members}
	a, err := ipam.New(cfg, sender)
	if err != nil {
		return err
	}
	d.ipam = a
	ch.a.Store(a)
	d.announceSignedInfos() // at once after a restart that signed before
	return nil
}

// tickLoop drives the allocator's periodic work and feeds it the
// membership the reconcile loop saw (feedIPAM).
func (d *Daemon) tickLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	d.health.beat(loopIPAMTick, time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.ipam.Tick()
			d.announceSignedInfos()
			d.health.beat(loopIPAMTick, time.Now())
		case live := <-d.ipamMembers:
			d.ipam.SetMembers(live)
		}
	}
}

// liveMembers maps member names to whether they count as reachable.
func liveMembers(ms []mesh.Member) map[string]bool {
	out := make(map[string]bool, len(ms))
	for _, m := range ms {
		out[m.Name] = m.State.Live()
	}
	return out
}

func (d *Daemon) ipamStatus() (*api.IPAM, string) {
	st := d.ipam.Status()
	out := &api.IPAM{Range: st.Range, Status: st.Status, Owned: st.Owned, Allocated: st.Allocated, Ranges: []api.RangeInfo{}, Problems: st.Problems,
		Blocked: st.Blocked, BlockedReason: st.BlockedReason}
	for _, r := range st.Ranges {
		out.Ranges = append(out.Ranges, api.RangeInfo{CIDR: r.CIDR.String(), Owner: r.Owner})
	}
	for _, p := range st.Peers {
		if p.Removed && p.Owned == 0 {
			continue // gone for good, and nothing left to show
		}
		out.Peers = append(out.Peers, api.IPAMPeer{Name: p.Name, Addresses: p.Owned, Percent: p.Percent, Reachable: p.Reachable})
	}
	for _, c := range st.Conflicts {
		out.Problems = append(out.Problems, "address held by two peers: "+c)
	}
	return out, st.OverlayIP
}

func (d *Daemon) allocation(containerID, ifName, network string, addr netip.Addr) api.Allocation {
	a := api.Allocation{ContainerID: containerID, IfName: ifName, Address: netip.PrefixFrom(addr, 32).String(),
		Bridge: d.cfg.Bridge, MTU: d.mtu, ClusterRange: d.cfg.IPAllocRange.String(), Network: network}
	if addr.Is4() {
		a.MAC = isolation.MACFor(addr).String()
	}
	if gw, ok := d.ipam.OverlayIP(); ok {
		a.Gateway = gw.String()
	}
	return a
}

// allocateTimeout bounds how long an ADD waits for space to arrive: a CNI
// ADD that fails with "try again later" is retried by the kubelet anyway.
const allocateTimeout = 20 * time.Second

// ipamAPI is control.IPAM: the allocator, with the port isolation and
// NetworkPolicy rules a new pod needs before it is wired.
type ipamAPI struct{ d *Daemon }

func (p ipamAPI) Allocate(ctx context.Context, req api.AllocateRequest) (api.Allocation, error) {
	d := p.d
	actx, cancel := context.WithTimeout(ctx, allocateTimeout)
	defer cancel()
	addr, err := d.ipam.AllocateIn(actx, req.Network, req.ContainerID, req.IfName)
	if err != nil {
		return api.Allocation{}, markIPAM(fmt.Errorf("failed to allocate an address for %s/%s: %w", req.ContainerID, req.IfName, err))
	}
	a := d.allocation(req.ContainerID, req.IfName, req.Network, addr)
	if a.Gateway == "" {
		// The pod could not be wired without its gateway; mesh-cni
		// releases the address on this error and the runtime retries.
		return api.Allocation{}, control.Mark(control.ErrUnavailable, fmt.Errorf("no gateway address on this node yet for %s/%s (ipam status %q); try again", req.ContainerID, req.IfName, d.ipam.Status().Status))
	}
	// The port's rules exist before the pod can send its first frame.
	if err := d.syncIsolation(); err != nil {
		return api.Allocation{}, control.Mark(control.ErrUnavailable, fmt.Errorf("address %s for %s/%s allocated, but %w", addr, req.ContainerID, req.IfName, err))
	}
	// Fail closed: no connectivity before the pod's policies are in place.
	if err := d.admitPolicy(ctx, req, addr); err != nil {
		return api.Allocation{}, control.Mark(control.ErrUnavailable, err)
	}
	return a, nil
}

// markIPAM gives an allocator error its kind: ErrUnavailable means "try
// again later" to mesh-cni, anything else is a refusal.
func markIPAM(err error) error {
	switch {
	case errors.Is(err, ipam.ErrNotReady), errors.Is(err, ipam.ErrClosed), errors.Is(err, context.DeadlineExceeded):
		return control.Mark(control.ErrUnavailable, err)
	case errors.Is(err, ipam.ErrNoSpace):
		return control.Mark(control.ErrNoSpace, err)
	default:
		return err
	}
}

func (p ipamAPI) Release(containerID, ifName string) error {
	d := p.d
	before := d.ipam.List()
	if err := d.ipam.Release(containerID, ifName); err != nil {
		return markIPAM(fmt.Errorf("failed to release %s/%s: %w", containerID, ifName, err))
	}
	d.released(before)
	return nil
}

func (p ipamAPI) GC(network string, keep []api.ReleaseRequest) (int, error) {
	d := p.d
	valid := make([]ipam.Key, 0, len(keep))
	for _, v := range keep {
		valid = append(valid, ipam.Key{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	// A runtime's GC lists only its own containers: `mesh attach`
	// attachments are the daemon's to collect (attach.Manager.Check).
	for _, a := range d.attach.List() {
		valid = append(valid, ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if network == "" {
		// An older plugin: its list covers only its own network, which
		// this daemon cannot tell apart, so nothing is collected.
		d.log.Warn("ignored a CNI GC without a network name (an older mesh-cni?); nothing released")
	}
	before := d.ipam.List()
	n, err := d.ipam.ReleaseAllExceptIn(network, valid)
	if err != nil {
		return 0, markIPAM(fmt.Errorf("failed to garbage-collect allocations of network %q: %w", network, err))
	}
	d.released(before)
	if n > 0 {
		d.log.Info("released stale allocations", "network", network, "count", n)
	}
	return n, nil
}

func (p ipamAPI) Allocations() []api.Allocation {
	out := []api.Allocation{}
	for _, a := range p.d.ipam.List() {
		out = append(out, p.d.allocation(a.ContainerID, a.IfName, a.Network, a.Addr))
	}
	return out
}

// RemovePeer is `mesh rmpeer NAME`: refused while NAME is alive, for a
// while after it died, and while this node's own view is too young to tell
// (see mesh.RemovalRefusal).
func (p ipamAPI) RemovePeer(name string) (int, error) {
	d := p.d
	if err := mesh.RemovalRefusal(name, d.members.Members(), time.Now()); err != nil {
		return 0, control.Mark(control.ErrConflict, err)
	}
	n, err := d.ipam.RemovePeer(name)
	if err != nil {
		return 0, err
	}
	d.log.Warn("took over the ranges of a removed peer", "peer", name, "ranges", n)
	return n, nil
}

// released cleans up after the allocations of before that are gone: their
// ports leave the isolation tables and their conntrack entries are
// flushed, so no flow of the old pod reaches the next one.
func (d *Daemon) released(before []ipam.Allocation) {
	still := map[ipam.Key]bool{}
	for _, a := range d.ipam.List() {
		still[ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	var gone []netip.Addr
	for _, a := range before {
		if !still[ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}] {
			gone = append(gone, a.Addr)
		}
	}
	if len(gone) == 0 {
		return
	}
	for _, a := range gone {
		d.policy.Forget(a)
	}
	if err := d.syncIsolation(); err != nil {
		d.log.Error("failed to update the port-isolation tables after a release; retrying", "error", err)
	}
	for _, a := range gone {
		d.flushConntrack(a)
	}
}
