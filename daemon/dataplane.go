package daemon

import (
	"context"
	"net/netip"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp/nat"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// reconcileStats are kept for metrics.
type reconcileStats struct {
	runs     int64
	errors   int64
	duration time.Duration // of the last run
	lastErr  error
}

// reconcileLoop feeds membership and the ring to the IPAM (who is alive)
// and to the data plane (who gets which ranges), whenever either changes
// and every few seconds, which also retries after a failure.
func (d *Daemon) reconcileLoop(ctx context.Context) {
	memberCh := d.members.Subscribe()
	ringCh := d.ipam.Subscribe()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		// One snapshot feeds both, so the IPAM and the data plane act on
		// the same membership.
		members := d.members.Members()
		d.ipam.SetMembers(liveMembers(members))
		d.reconcileOnce(ctx, members)
		select {
		case <-ctx.Done():
			return
		case <-memberCh:
		case <-ringCh:
		case <-t.C:
		}
		// Coalesce a burst of changes into one reconcile.
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *Daemon) reconcileOnce(ctx context.Context, members []mesh.Member) {
	overlay, haveOverlay := d.ipam.OverlayIP()
	if d.rec != nil {
		start := time.Now()
		in := d.peerInput(overlay, members)
		_, err := d.rec.Apply(ctx, in)
		d.mu.Lock()
		d.reconcile.runs++
		d.reconcile.duration = time.Since(start)
		d.reconcile.lastErr = err
		if err != nil {
			d.reconcile.errors++
		} else if haveOverlay {
			d.dpReady = true
		}
		d.mu.Unlock()
	}
	d.applyNAT(overlay, members)
	d.maybeInstallCNI(haveOverlay)
}

// applyNAT keeps the NAT table (outbound masquerade, overlay source for
// host traffic into WireGuard, masquerade to the other nodes' addresses)
// as configured; every reconcile restores it
// if it went missing. A failure is reported in the status but does not
// make the node unready: pod-to-pod traffic does not depend on it.
func (d *Daemon) applyNAT(overlay netip.Addr, members []mesh.Member) {
	if d.nat == nil {
		return
	}
	var nodes []netip.Addr
	for _, m := range members {
		// Any state: a dead node's address costs a set element, and
		// its host may still answer.
		if a := m.Addr.Addr().Unmap(); m.Name != d.id.Name && a.Is4() {
			nodes = append(nodes, a)
		}
	}
	err := d.nat.Set(&nat.Config{
		Nodes:         nodes,
		ClusterRange:  d.cfg.IPAllocRange,
		Masquerade:    !d.cfg.NoMasquerade,
		NoMasquerade:  d.cfg.NoMasqueradeCIDRs,
		OverlayDevice: d.cfg.WGDevice,
		OverlayIP:     overlay,
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil && (d.natErr == nil || d.natErr.Error() != err.Error()) {
		d.log.Warn("failed to apply the NAT table", "error", err)
	}
	d.natErr = err
}

func (d *Daemon) peerInput(overlay netip.Addr, members []mesh.Member) peer.Input {
	in := peer.Input{
		Self: d.id.Name, Password: d.cfg.Password, PrivateKey: d.key,
		ListenPort: d.cfg.DPPort, MTU: d.mtu, Keepalive: d.cfg.Keepalive,
		ClusterRange: d.cfg.IPAllocRange, OverlayIP: overlay, BridgeName: d.cfg.Bridge,
	}
	for _, m := range members {
		n := peer.Node{Name: m.Name, Addr: m.Addr.Addr(), DPPort: m.Meta.DPPort, State: m.State}
		if k, err := crypto.ParseKey(m.Meta.PublicKey); err == nil {
			n.PublicKey = k
		}
		in.Nodes = append(in.Nodes, n)
	}
	for _, r := range d.ipam.Ranges() {
		if r.Owner != "" {
			in.Ranges = append(in.Ranges, peer.RangeOwner{CIDR: r.CIDR, Owner: r.Owner})
		}
	}
	return in
}

// handshakeFresh is how recent a handshake must be for a connection to
// count as established: WireGuard rekeys every 2 minutes while traffic or
// keepalives flow.
const handshakeFresh = 3 * time.Minute

// connectGrace is how long a peer may go without a handshake before it is
// reported failed rather than connecting.
const connectGrace = 90 * time.Second

func (d *Daemon) connections(ctx context.Context) []api.Connection {
	if d.rec == nil {
		return nil
	}
	stats, err := d.rec.Stats(ctx)
	if err != nil {
		d.log.Debug("cannot read data plane stats", "error", err)
		return nil
	}
	now := time.Now()
	allowed := map[crypto.Key][]string{}
	if last := d.rec.Last(); last != nil {
		for _, p := range last.Peers {
			for _, a := range p.AllowedIPs {
				allowed[p.PublicKey] = append(allowed[p.PublicKey], a.String())
			}
		}
	}
	out := []api.Connection{}
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[crypto.Key]bool{}
	for _, s := range stats {
		seen[s.PublicKey] = true
		first, ok := d.firstSeen[s.PublicKey]
		if !ok {
			first = now
			d.firstSeen[s.PublicKey] = now
		}
		name, ok := d.rec.NodeName(s.PublicKey)
		if !ok {
			name = s.PublicKey.String()
		}
		c := api.Connection{Peer: name, RxBytes: s.RxBytes, TxBytes: s.TxBytes, AllowedIPs: allowed[s.PublicKey]}
		if s.Endpoint.IsValid() {
			c.Endpoint = s.Endpoint.String()
		}
		switch {
		case !s.LastHandshake.IsZero() && now.Sub(s.LastHandshake) < handshakeFresh:
			c.State = "established"
		case now.Sub(first) < connectGrace:
			c.State = "connecting"
		default:
			c.State = "failed"
		}
		if !s.LastHandshake.IsZero() {
			c.LastHandshake = s.LastHandshake.UTC().Format(time.RFC3339)
		}
		out = append(out, c)
	}
	for k := range d.firstSeen {
		if !seen[k] {
			delete(d.firstSeen, k)
		}
	}
	return out
}
