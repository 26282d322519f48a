package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/meshnet/mesh/api"
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

func (d *Daemon) startIPAM(initialPeers int) error {
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
	a, err := ipam.New(cfg, sender)
	if err != nil {
		return err
	}
	d.ipam = a
	ch.a.Store(a)
	return nil
}

// tickLoop drives the allocator's periodic work.
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
			d.health.beat(loopIPAMTick, time.Now())
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

func (d *Daemon) handleAllocate(w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if req.ContainerID == "" || req.IfName == "" {
		writeError(w, http.StatusBadRequest, errors.New("containerID and ifName are required"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), allocateTimeout)
	defer cancel()
	addr, err := d.ipam.AllocateIn(ctx, req.Network, req.ContainerID, req.IfName)
	if err != nil {
		writeError(w, ipamErrorCode(err), fmt.Errorf("failed to allocate an address for %s/%s: %w", req.ContainerID, req.IfName, err))
		return
	}
	a := d.allocation(req.ContainerID, req.IfName, req.Network, addr)
	if a.Gateway == "" {
		// The pod could not be wired without its gateway; mesh-cni
		// releases the address on this error and the runtime retries.
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("no gateway address on this node yet for %s/%s (ipam status %q); try again", req.ContainerID, req.IfName, d.ipam.Status().Status))
		return
	}
	// The port's rules exist before the pod can send its first frame.
	if err := d.syncIsolation(); err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("address %s for %s/%s allocated, but %w", addr, req.ContainerID, req.IfName, err))
		return
	}
	// Fail closed: no connectivity before the pod's policies are in place.
	if err := d.admitPolicy(r.Context(), req, addr); err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// ipamErrorCode maps allocator errors to HTTP: 503 means "try again later"
// to mesh-cni, anything else is a refusal.
func ipamErrorCode(err error) int {
	switch {
	case errors.Is(err, ipam.ErrNotReady), errors.Is(err, ipam.ErrClosed), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	case errors.Is(err, ipam.ErrNoSpace):
		return http.StatusInsufficientStorage
	default:
		return http.StatusInternalServerError
	}
}

func (d *Daemon) handleRelease(w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	before := d.ipam.List()
	if err := d.ipam.Release(req.ContainerID, req.IfName); err != nil {
		writeError(w, ipamErrorCode(err), fmt.Errorf("failed to release %s/%s: %w", req.ContainerID, req.IfName, err))
		return
	}
	d.released(before)
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) handleGC(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	valid := make([]ipam.Key, 0, len(req.Valid))
	for _, v := range req.Valid {
		valid = append(valid, ipam.Key{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	// A runtime's GC lists only its own containers: `mesh attach`
	// attachments are the daemon's to collect (attach.Manager.Check).
	for _, a := range d.attach.List() {
		valid = append(valid, ipam.Key{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if req.Network == "" {
		// An older plugin: its list covers only its own network, which
		// this daemon cannot tell apart, so nothing is collected.
		d.log.Warn("ignored a CNI GC without a network name (an older mesh-cni?); nothing released")
	}
	before := d.ipam.List()
	n, err := d.ipam.ReleaseAllExceptIn(req.Network, valid)
	if err != nil {
		writeError(w, ipamErrorCode(err), fmt.Errorf("failed to garbage-collect allocations of network %q: %w", req.Network, err))
		return
	}
	d.released(before)
	if n > 0 {
		d.log.Info("released stale allocations", "network", req.Network, "count", n)
	}
	writeJSON(w, http.StatusOK, api.GCResult{Released: n})
}

func (d *Daemon) handleAllocations(w http.ResponseWriter, r *http.Request) {
	out := []api.Allocation{}
	for _, a := range d.ipam.List() {
		out = append(out, d.allocation(a.ContainerID, a.IfName, a.Network, a.Addr))
	}
	writeJSON(w, http.StatusOK, out)
}

// rmpeerSettle is how long after a peer's death rmpeer waits: two of
// memberlist's full state exchanges (15 s apart) and then some. It is also
// how long this node must have had a view of the mesh (since its daemon
// started, or since it last went from seeing no live peer to seeing one).
var rmpeerSettle = 40 * time.Second

// handleRemovePeer is `mesh rmpeer NAME`: refused while NAME is alive, for
// a while after it died, and while this node's own view is too young to
// tell (see rmpeerRefusal).
func (d *Daemon) handleRemovePeer(w http.ResponseWriter, r *http.Request) {
	var req api.RemovePeerRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err := rmpeerRefusal(req.Name, d.members.Members(), time.Now()); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	n, err := d.ipam.RemovePeer(req.Name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	d.log.Warn("took over the ranges of a removed peer", "peer", req.Name, "ranges", n)
	writeJSON(w, http.StatusOK, api.RemovePeerResult{Ranges: n})
}

// rmpeerRefusal says why NAME may not be removed now, given this node's
// members (every node seen since its daemon started), or nil.
//
// Membership only knows what this daemon saw since it started: right after
// a restart, or while cut off from every other peer, a live NAME is simply
// not (yet) listed, and its removal would hand its live pods' addresses to
// this node. So besides NAME being alive or recently dead, rmpeer is
// refused until this node's view of the mesh is rmpeerSettle old: joining
// any live peer brings the full member list with the first push/pull, and
// dead members are declared within the same window.
func rmpeerRefusal(name string, ms []mesh.Member, now time.Time) error {
	for _, m := range ms {
		if m.Name != name {
			continue
		}
		if m.Self {
			return fmt.Errorf("%s is this node; run rmpeer on another node", name)
		}
		if m.State.Live() {
			return fmt.Errorf("refusing to remove %s: it is %s; stop it first, and run rmpeer once it shows dead", name, m.State)
		}
		// The peer's last changes (a range it gave away just before it
		// died) must have reached this node first, or the removal could
		// take back space another node already uses: wait a few full
		// state exchanges after its death.
		if wait := rmpeerSettle - now.Sub(m.Since); wait > 0 {
			return fmt.Errorf("refusing to remove %s yet: it died %s ago; try again in %s, once its last changes have spread", name, now.Sub(m.Since).Round(time.Second), wait.Round(time.Second))
		}
	}
	if age, why := viewAge(ms, now); age < rmpeerSettle {
		return fmt.Errorf("refusing to remove %s yet: this node %s %s ago and may not know yet whether %s is alive; try again in %s", name, why, age.Round(time.Second), name, (rmpeerSettle - age).Round(time.Second))
	}
	return nil
}

// viewAge is how long this node has had its current view of the mesh: since
// it first saw the longest-known peer that is still live, or, seeing none,
// since the last peer died or its daemon started, whichever is later. why
// names the event.
func viewAge(ms []mesh.Member, now time.Time) (age time.Duration, why string) {
	var joined, lost, started time.Time
	for _, m := range ms {
		switch {
		case m.Self:
			started = m.Since
		case m.State.Live():
			if joined.IsZero() || m.Since.Before(joined) {
				joined = m.Since
			}
		case m.Since.After(lost):
			lost = m.Since
		}
	}
	switch {
	case !joined.IsZero():
		return now.Sub(joined), "joined the mesh"
	case lost.After(started):
		return now.Sub(lost), "lost its last live peer"
	default:
		return now.Sub(started), "started"
	}
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
	if d.policy != nil {
		for _, a := range gone {
			d.policy.Forget(a)
		}
	}
	if err := d.syncIsolation(); err != nil {
		d.log.Error("failed to update the port-isolation tables after a release; retrying", "error", err)
	}
	for _, a := range gone {
		d.flushConntrack(a)
	}
}
