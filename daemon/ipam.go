package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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

func (c *ipamChannel) LocalState(join bool) []byte {
	if a := c.a.Load(); a != nil {
		return a.PushPullState(join)
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

// ipamStateFile and ipamStateFile6 are the allocators' state files: the
// IPv4 one keeps the name of the releases before dual-stack, so an upgrade
// finds its file.
const (
	ipamStateFile  = "ipam.json"
	ipamStateFile6 = "ipam6.json"
)

// startIPAM starts one allocator per configured family (docs/ipam.md,
// "Dual-stack"): each with its own ring, state file and gossip channel,
// sharing nothing, so each family's safety argument is the single-range
// one.
func (d *Daemon) startIPAM(initialPeers int, signKey ed25519.PrivateKey) error {
	ids := &ipamIdentities{self: d.id.Name, key: signKey, members: d.members}
	channel, file := mesh.ChannelIPAM, ipamStateFile
	if d.cfg.ipv6Only() {
		// The IPv6 ring keeps its channel and file in an IPv6-only mesh:
		// a node of the previous release never sees it, and adding IPv4
		// later does not turn it into the IPv4 ring.
		channel, file = mesh.ChannelIPAM6, ipamStateFile6
	}
	a, err := d.newAllocator(d.cfg.IPAllocRange, channel, file, initialPeers, ids)
	if err != nil {
		return err
	}
	d.ipam = a
	if d.cfg.IPAllocRange6.IsValid() {
		if d.ipam6, err = d.newAllocator(d.cfg.IPAllocRange6, mesh.ChannelIPAM6, ipamStateFile6, initialPeers, ids); err != nil {
			return fmt.Errorf("IPv6 range %s: %w", d.cfg.IPAllocRange6, err)
		}
	}
	d.announceSignedInfos() // at once after a restart that signed before
	return nil
}

func (d *Daemon) newAllocator(r netip.Prefix, channel mesh.ChannelID, file string, initialPeers int, ids ipam.Identities) (*ipam.Allocator, error) {
	ch := &ipamChannel{}
	sender, err := d.members.Register(channel, ch)
	if err != nil {
		return nil, err
	}
	cfg := ipam.DefaultConfig()
	cfg.Range = r
	cfg.Self = d.id.Name
	cfg.SelfID = d.id.PeerID
	cfg.StateFile = d.cfg.path(file)
	cfg.InitialPeerCount = initialPeers
	cfg.ReclaimAfter = d.cfg.ReclaimAfter
	cfg.Logger = d.log
	if r.Addr().Is6() {
		cfg.Logger = d.log.With("family", "ipv6")
	}
	cfg.IsMember = d.members.IsMember
	cfg.Identities = ids
	cfg.Deltas = d.deltasOn
	cfg.Digests = d.digestsOn
	cfg.Admission = func() bool { return joiningOn(d.members.Members(), time.Now()) }
	cfg.ListOwned = func() bool { return ownedOn(d.members.Members(), time.Now()) }
	cfg.AckRemovals = func() bool { return acksOn(d.members.Members(), time.Now()) }
	cfg.VouchReclaims = func() bool { return vouchesOn(d.members.Members(), time.Now()) }
	a, err := ipam.New(cfg, sender)
	if err != nil {
		return nil, err
	}
	ch.a.Store(a)
	return a, nil
}

// deltasOn is deltasOn of the current membership: what the allocators
// follow (Config.Deltas) and what status shows.
func (d *Daemon) deltasOn() bool { return deltasOn(d.members.Members(), time.Now()) }

// digestsOn is digestsOn of the current membership (Config.Digests).
func (d *Daemon) digestsOn() bool { return digestsOn(d.members.Members(), time.Now()) }

// allocators are the running allocators, IPv4 first.
func (d *Daemon) allocators() []*ipam.Allocator {
	out := make([]*ipam.Allocator, 0, 2)
	for _, a := range []*ipam.Allocator{d.ipam, d.ipam6} {
		if a != nil {
			out = append(out, a)
		}
	}
	return out
}

// overlayIPs returns this node's gateway of each family (the zero address
// for a family that is off or has none yet), and whether every configured
// family has one: the one rule for "pods can be wired here".
func (d *Daemon) overlayIPs() (v4, v6 netip.Addr, ok bool) {
	v4, ok = d.ipam.OverlayIP()
	if d.ipam6 != nil {
		var ok6 bool
		v6, ok6 = d.ipam6.OverlayIP()
		ok = ok && ok6
	}
	return v4, v6, ok
}

// ipamList lists the allocations of every family.
func (d *Daemon) ipamList() []ipam.Allocation {
	var out []ipam.Allocation
	for _, a := range d.allocators() {
		out = append(out, a.List()...)
	}
	return out
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
			for _, a := range d.allocators() {
				a.Tick()
			}
			d.announceSignedInfos()
			d.health.beat(loopIPAMTick, time.Now())
		case live := <-d.ipamMembers:
			for _, a := range d.allocators() {
				a.SetMembers(live)
			}
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
	out, overlay := allocatorStatus(d.ipam)
	var problems []string
	out.SignedStates, problems = d.signedStatus(d.ipam)
	out.Deltas = d.deltasOn()
	out.Digests = d.ipam.DigestsOn()
	out.OwnedListed = d.ipam.ListsOwned()
	// Named in this section only: a member that cannot read signed
	// states, or the lists, is one problem, however many families run.
	out.Problems = append(out.Problems, problems...)
	out.Problems = append(out.Problems, listProblems(d.members.Members(), time.Now(), out.OwnedListed, out.TombstonesAcked, out.ReclaimsVouched)...)
	return out, overlay
}

// signedStatus is a's switch to signed states and, once it is made, the
// live members that cannot read them (signedSwitch.status).
func (d *Daemon) signedStatus(a *ipam.Allocator) (*api.SignedStates, []string) {
	return signedSwitchOf(d.members.Members(), time.Now()).status(a.SignsInfos())
}

// ipamStatus6 is the IPv6 allocator's section of the status, nil in an
// IPv4-only mesh.
func (d *Daemon) ipamStatus6() (*api.IPAM, string) {
	if d.ipam6 == nil {
		return nil, ""
	}
	out, overlay := allocatorStatus(d.ipam6)
	out.Problems = append(out.Problems, lacksFamily(out.Peers, d.members.Members(), time.Now())...)
	out.SignedStates, _ = d.signedStatus(d.ipam6)
	out.Deltas = d.deltasOn()
	out.Digests = d.ipam6.DigestsOn()
	out.OwnedListed = d.ipam6.ListsOwned()
	return out, overlay
}

// familyGrace is how long a member may be alive before its absence from
// the IPv6 ring's peer table is named in status: a node that has just
// joined has not sent its state yet.
const familyGrace = 20 * time.Second

// lacksFamily names the members alive for familyGrace that the IPv6 ring
// does not know: nodes configured without the IPv6 range (or of a release
// before dual-stack), whose pods get no IPv6 address.
func lacksFamily(ring []api.IPAMPeer, members []mesh.Member, now time.Time) []string {
	known := make(map[string]bool, len(ring))
	for _, p := range ring {
		known[p.Name] = true
	}
	var out []string
	for _, m := range members {
		if m.Self || m.State != api.MemberAlive || known[m.Name] || now.Sub(m.Since) < familyGrace {
			continue
		}
		out = append(out, fmt.Sprintf("member %s runs no IPv6 range: its pods get no IPv6 address (give every node the same --ipalloc-range values)", m.Name))
	}
	return out
}

func allocatorStatus(a *ipam.Allocator) (*api.IPAM, string) {
	st := a.Status()
	out := &api.IPAM{Range: st.Range, Status: st.Status, Owned: st.Owned, Allocated: st.Allocated, Free: st.Free, Ranges: []api.RangeInfo{}, Problems: st.Problems,
		Blocked: st.Blocked, BlockedReason: st.BlockedReason, StateBytes: st.StateBytes, Tombstones: st.Tombstones,
		TombstonesAcked: st.TombstonesAcked, TombstonesDropped: st.TombstonesDropped, ReclaimsVouched: st.ReclaimsVouched}
	for _, r := range st.Ranges {
		out.Ranges = append(out.Ranges, api.RangeInfo{CIDR: r.CIDR.String(), Owner: r.Owner})
	}
	for _, p := range st.Peers {
		if p.Removed && p.Owned == 0 && p.Held == 0 {
			continue // gone for good, and nothing left to show
		}
		out.Peers = append(out.Peers, api.IPAMPeer{Name: p.Name, Addresses: p.Owned, Percent: p.Percent, Reachable: p.Reachable, Joining: p.Joining,
			Removed: p.Removed, Reserved: reservedBy(p)})
	}
	for _, c := range st.Conflicts {
		out.Problems = append(out.Problems, "address held by two peers: "+c)
	}
	return out, st.OverlayIP
}

// allocation is the answer for one key: addr its IPv4 address, addr6 its
// IPv6 address in a dual-stack mesh (either may be the zero address: an
// allocation of one family that a crash or a failed ADD left behind).
func (d *Daemon) allocation(containerID, ifName, network string, addr, addr6 netip.Addr) api.Allocation {
	a := api.Allocation{ContainerID: containerID, IfName: ifName,
		Bridge: d.cfg.Bridge, MTU: d.mtu, ClusterRange: d.cfg.IPAllocRange.String(), Network: network}
	if addr.IsValid() {
		a.Address = netip.PrefixFrom(addr, addr.BitLen()).String()
	}
	v4, v6 := addr, addr6
	if d.cfg.ipv6Only() {
		v4, v6 = netip.Addr{}, addr
	}
	if mac := isolation.PodMAC(v4, v6); mac != nil {
		a.MAC = mac.String()
	}
	if gw, ok := d.ipam.OverlayIP(); ok {
		a.Gateway = gw.String()
	}
	if d.ipam6 != nil {
		a.ClusterRange6 = d.cfg.IPAllocRange6.String()
		if addr6.IsValid() {
			a.Address6 = netip.PrefixFrom(addr6, addr6.BitLen()).String()
		}
		if gw, ok := d.ipam6.OverlayIP(); ok {
			a.Gateway6 = gw.String()
		}
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
	var addr6 netip.Addr
	if d.ipam6 != nil {
		// The IPv6 address under the same key, within the same deadline.
		// If it cannot be had, the IPv4 one goes too: a failed ADD
		// leaves nothing behind (docs/ipam.md, "Dual-stack").
		if addr6, err = d.ipam6.AllocateIn(actx, req.Network, req.ContainerID, req.IfName); err != nil {
			err = markIPAM(fmt.Errorf("failed to allocate an IPv6 address for %s/%s: %w", req.ContainerID, req.IfName, err))
			if rerr := d.ipam.Release(req.ContainerID, req.IfName); rerr != nil {
				return api.Allocation{}, fmt.Errorf("%w; also failed to release its IPv4 address %s: %w", err, addr, rerr)
			}
			d.released([]ipam.Allocation{{ContainerID: req.ContainerID, IfName: req.IfName, Network: req.Network, Addr: addr}})
			return api.Allocation{}, err
		}
	}
	a := d.allocation(req.ContainerID, req.IfName, req.Network, addr, addr6)
	if a.Gateway == "" || (d.ipam6 != nil && a.Gateway6 == "") {
		// The pod could not be wired without its gateways; mesh-cni
		// releases the addresses on this error and the runtime retries.
		return api.Allocation{}, control.Mark(control.ErrUnavailable, fmt.Errorf("no gateway address on this node yet for %s/%s (ipam status %s); try again", req.ContainerID, req.IfName, d.ipamStatusWords()))
	}
	// The port's rules exist before the pod can send its first frame.
	if err := d.syncIsolation(); err != nil {
		return api.Allocation{}, control.Mark(control.ErrUnavailable, fmt.Errorf("address %s for %s/%s allocated, but %w", addr, req.ContainerID, req.IfName, err))
	}
	// Fail closed: no connectivity before the pod's policies cover its
	// addresses of both families.
	if err := d.admitPolicy(ctx, req, []netip.Addr{addr, addr6}); err != nil {
		return api.Allocation{}, control.Mark(control.ErrUnavailable, err)
	}
	return a, nil
}

// ipamStatusWords is the status word of each family's allocator, for
// messages: "ready", or "IPv4 ready, IPv6 waiting".
func (d *Daemon) ipamStatusWords() string {
	if d.ipam6 == nil {
		return fmt.Sprintf("%q", d.ipam.Status().Status)
	}
	return fmt.Sprintf("IPv4 %q, IPv6 %q", d.ipam.Status().Status, d.ipam6.Status().Status)
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

// Release frees the key's address in every family; each release is
// idempotent, so a DEL after a partial one finishes it.
func (p ipamAPI) Release(containerID, ifName string) error {
	d := p.d
	before := d.ipamList()
	var errs []error
	for _, a := range d.allocators() {
		if err := a.Release(containerID, ifName); err != nil {
			errs = append(errs, markIPAM(fmt.Errorf("failed to release %s/%s in %s: %w", containerID, ifName, a.Status().Range, err)))
		}
	}
	d.released(before)
	return errors.Join(errs...)
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
	before := d.ipamList()
	total := 0
	var errs []error
	for _, a := range d.allocators() {
		n, err := a.ReleaseAllExceptIn(network, valid)
		if err != nil {
			errs = append(errs, markIPAM(fmt.Errorf("failed to garbage-collect allocations of network %q in %s: %w", network, a.Status().Range, err)))
		}
		total += n
	}
	d.released(before)
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	if total > 0 {
		d.log.Info("released stale allocations", "network", network, "count", total)
	}
	return total, nil
}

// Allocations lists one entry per key, with its address of each family;
// the IPv4 allocator's order first, then keys that hold an IPv6 address
// only.
func (p ipamAPI) Allocations() []api.Allocation {
	d := p.d
	out := []api.Allocation{}
	v6 := map[ipam.Key]ipam.Allocation{}
	if d.ipam6 != nil {
		for _, a := range d.ipam6.List() {
			v6[ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}] = a
		}
	}
	for _, a := range d.ipam.List() {
		k := ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}
		b := v6[k]
		delete(v6, k)
		out = append(out, d.allocation(a.ContainerID, a.IfName, a.Network, a.Addr, b.Addr))
	}
	if d.ipam6 != nil {
		for _, b := range d.ipam6.List() {
			if _, ok := v6[ipam.Key{ContainerID: b.ContainerID, IfName: b.IfName}]; ok {
				out = append(out, d.allocation(b.ContainerID, b.IfName, b.Network, netip.Addr{}, b.Addr))
			}
		}
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
	total := 0
	for _, a := range d.allocators() {
		if a != d.ipam && !knowsPeer(a, name) {
			continue // a node that never ran this family
		}
		n, err := a.RemovePeer(name)
		if err != nil {
			return total, fmt.Errorf("failed to remove peer %q from %s: %w", name, a.Status().Range, err)
		}
		total += n
	}
	d.log.Warn("removed a peer: its ranges go to their heirs", "peer", name, "ranges", total)
	return total, nil
}

// knowsPeer reports whether a's peer table lists name.
func knowsPeer(a *ipam.Allocator, name string) bool {
	return slices.ContainsFunc(a.Status().Peers, func(p ipam.PeerStatus) bool { return p.Name == name })
}

// released cleans up after the allocations of before that are gone: their
// ports leave the isolation tables and their conntrack entries are
// flushed, so no flow of the old pod reaches the next one.
func (d *Daemon) released(before []ipam.Allocation) {
	type famKey struct {
		k  ipam.Key
		v6 bool
	}
	still := map[famKey]bool{}
	for _, a := range d.ipamList() {
		still[famKey{ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}, a.Addr.Is6()}] = true
	}
	var gone []netip.Addr
	for _, a := range before {
		if !still[famKey{ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName}, a.Addr.Is6()}] {
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

// reservedBy is what a removed peer still holds for its pods (a deleted
// Node's last known Held); 0 for a live peer, whose Held is its own
// business (its allocations).
func reservedBy(p ipam.PeerStatus) int {
	if !p.Removed {
		return 0
	}
	return p.Held
}

// pushPullsPerReclaim is how many push/pull intervals fit in
// --ipalloc-reclaim-after at least.
const pushPullsPerReclaim = 4

// pushPullInterval is the gossip push/pull interval for a reclaim window.
// With automatic reclaim on, a peer is reclaimed when its IPAM heartbeat
// has not grown in another's view for ReclaimAfter, and heartbeats travel
// by push/pull alone (docs/ipam.md). With a window close to the interval
// (15 s), a node back from a partition once found a live node's heartbeat
// 23 s old and reclaimed it (20 s window). So a short window shortens the
// interval to a quarter of it, down to a second; a window of minutes, as
// recommended, keeps the default.
func pushPullInterval(reclaimAfter time.Duration) time.Duration {
	if reclaimAfter <= 0 {
		return mesh.DefaultPushPullInterval
	}
	return min(mesh.DefaultPushPullInterval, max(reclaimAfter/pushPullsPerReclaim, time.Second))
}
