package daemon

import (
	"context"
	"net/netip"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

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
		d.health.beat(loopReconcile, time.Now())
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
	overlay, _ := d.ipam.OverlayIP()
	// Errors are counted, logged and kept by the reconciler.
	d.rec.Apply(ctx, d.peerInput(overlay, members))
	d.maybeInstallCNI()
}

func (d *Daemon) peerInput(overlay netip.Addr, members []mesh.Member) peer.Input {
	in := peer.Input{
		Self: d.id.Name, Password: d.cfg.Password, PrivateKey: d.key,
		ListenPort: d.cfg.DPPort, MTU: d.mtu, Keepalive: d.cfg.Keepalive,
		ClusterRange: d.cfg.IPAllocRange, OverlayIP: overlay, BridgeName: d.cfg.Bridge,
	}
	d.reportBadMeta(members)
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
	for _, s := range stats {
		first, ok := d.rec.PeerSince(s.PublicKey)
		if !ok {
			first = now // in the device but not (yet) in a config we applied
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
			c.State = api.ConnEstablished
		case now.Sub(first) < connectGrace:
			c.State = api.ConnConnecting
		default:
			c.State = api.ConnFailed
		}
		if !s.LastHandshake.IsZero() {
			c.LastHandshake = s.LastHandshake.UTC().Format(time.RFC3339)
		}
		out = append(out, c)
	}
	return out
}

// reportBadMeta logs, once per member and problem, a member whose gossip
// metadata does not parse or carries no valid WireGuard key: such a member
// gets no WireGuard peer, and without this its pods would be unreachable with
// nothing said. The record holds only current members, so it stays bounded.
func (d *Daemon) reportBadMeta(members []mesh.Member) {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := make(map[string]string, len(members))
	for _, m := range members {
		if m.Self {
			continue
		}
		var problem string
		if m.MetaErr != nil {
			problem = "its gossip metadata does not parse: " + m.MetaErr.Error()
		} else if _, err := crypto.ParseKey(m.Meta.PublicKey); err != nil && m.Meta.PublicKey != "" {
			problem = "its WireGuard public key is invalid: " + err.Error()
		}
		if problem == "" {
			continue
		}
		seen[m.Name] = problem
		if d.badMeta[m.Name] != problem {
			d.log.Warn("peer gets no WireGuard peer: "+problem, "peer", m.Name, "version", m.Meta.Version)
		}
	}
	d.badMeta = seen
}
