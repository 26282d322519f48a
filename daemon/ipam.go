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
		return a.MergeRemoteState(b)
	}
	return nil
}

func (c *ipamChannel) HandleMessage(from string, msg []byte) error {
	if a := c.a.Load(); a != nil {
		return a.HandleMessage(from, msg)
	}
	return nil
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.ipam.Tick()
		}
	}
}

// liveMembers maps member names to whether they count as reachable.
func liveMembers(ms []mesh.Member) map[string]bool {
	out := make(map[string]bool, len(ms))
	for _, m := range ms {
		out[m.Name] = m.State == mesh.StateAlive || m.State == mesh.StateSuspect
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

func (d *Daemon) allocation(containerID, ifName string, addr netip.Addr) api.Allocation {
	a := api.Allocation{ContainerID: containerID, IfName: ifName, Address: netip.PrefixFrom(addr, 32).String(),
		Bridge: d.cfg.Bridge, MTU: d.mtu, ClusterRange: d.cfg.IPAllocRange.String()}
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
	addr, err := d.ipam.Allocate(ctx, req.ContainerID, req.IfName)
	if err != nil {
		writeError(w, ipamErrorCode(err), fmt.Errorf("failed to allocate an address for %s/%s: %w", req.ContainerID, req.IfName, err))
		return
	}
	writeJSON(w, http.StatusOK, d.allocation(req.ContainerID, req.IfName, addr))
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
	if err := d.ipam.Release(req.ContainerID, req.IfName); err != nil {
		writeError(w, ipamErrorCode(err), fmt.Errorf("failed to release %s/%s: %w", req.ContainerID, req.IfName, err))
		return
	}
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
	n, err := d.ipam.ReleaseAllExcept(valid)
	if err != nil {
		writeError(w, ipamErrorCode(err), fmt.Errorf("failed to garbage-collect allocations: %w", err))
		return
	}
	if n > 0 {
		d.log.Info("released stale allocations", "count", n)
	}
	writeJSON(w, http.StatusOK, api.GCResult{Released: n})
}

func (d *Daemon) handleAllocations(w http.ResponseWriter, r *http.Request) {
	out := []api.Allocation{}
	for _, a := range d.ipam.List() {
		out = append(out, d.allocation(a.ContainerID, a.IfName, a.Addr))
	}
	writeJSON(w, http.StatusOK, out)
}

// rmpeerSettle is how long after a peer's death rmpeer waits: two of
// memberlist's full state exchanges (15 s apart) and then some.
var rmpeerSettle = 40 * time.Second

// handleRemovePeer is `mesh rmpeer NAME`: refused while NAME is alive, and
// for a short while after it died.
func (d *Daemon) handleRemovePeer(w http.ResponseWriter, r *http.Request) {
	var req api.RemovePeerRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	for _, m := range d.members.Members() {
		if m.Name != req.Name {
			continue
		}
		if m.Self {
			writeError(w, http.StatusConflict, fmt.Errorf("%s is this node; run rmpeer on another node", req.Name))
			return
		}
		if m.State == mesh.StateAlive || m.State == mesh.StateSuspect {
			writeError(w, http.StatusConflict, fmt.Errorf("refusing to remove %s: it is %s; stop it first, and run rmpeer once it shows dead", req.Name, m.State))
			return
		}
		// The peer's last changes (a range it gave away just before it
		// died) must have reached this node first, or the removal could
		// take back space another node already uses: wait a few full
		// state exchanges after its death.
		if wait := rmpeerSettle - time.Since(m.Since); wait > 0 {
			writeError(w, http.StatusConflict, fmt.Errorf("refusing to remove %s yet: it died %s ago; try again in %s, once its last changes have spread", req.Name, time.Since(m.Since).Round(time.Second), wait.Round(time.Second)))
			return
		}
	}
	n, err := d.ipam.RemovePeer(req.Name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	d.log.Warn("took over the ranges of a removed peer", "peer", req.Name, "ranges", n)
	writeJSON(w, http.StatusOK, api.RemovePeerResult{Ranges: n})
}
