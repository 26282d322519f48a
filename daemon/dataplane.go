package daemon

import (
	"context"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/coord"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp/nat"
	"github.com/meshnet/mesh/fastdp/relayed"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// reconcileLoop feeds membership and the ring to the IPAM (who is alive)
// and to the data plane (who gets which ranges), whenever either changes
// and every few seconds, which also retries after a failure.
func (d *Daemon) reconcileLoop(ctx context.Context) {
	memberCh := d.members.Subscribe()
	ringCh := d.ipam.Subscribe()
	// The IPv6 ring's changes; nil (never ready) in an IPv4-only mesh.
	var ringCh6 <-chan struct{}
	if d.ipam6 != nil {
		ringCh6 = d.ipam6.Subscribe()
	}
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		// One snapshot feeds both, so the IPAM and the data plane act on
		// the same membership.
		members := d.members.Members()
		d.feedIPAM(liveMembers(members))
		d.updateGossipPrimary(members)
		d.reconcileOnce(ctx, members)
		d.health.beat(loopReconcile, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-d.kick:
		case <-memberCh:
		case <-ringCh:
		case <-ringCh6:
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

// feedIPAM hands the tick loop the newest membership for the IPAM,
// replacing one it has not taken yet. Only the reconcile loop sends, so the
// second send always finds room.
func (d *Daemon) feedIPAM(live map[string]bool) {
	select {
	case <-d.ipamMembers:
	default:
	}
	select {
	case d.ipamMembers <- live:
	default:
	}
}

// natTable is the NAT table (a *nat.NAT), or noNAT without a data plane.
// Set is idempotent and blocks on one netlink transaction at most.
type natTable interface {
	Set(cfg *nat.Config) error
}

// noNAT is the NAT table of a node without a data plane: nothing to
// translate.
type noNAT struct{}

func (noNAT) Set(*nat.Config) error { return nil }

// relayCounter counts what this node routes for others (a
// *relayed.Counter), or noRelayCounter without a data plane. Set is
// idempotent and blocks on one netlink transaction at most.
type relayCounter interface {
	Set(device string, sources []relayed.Source) error
	Read() (relayed.Counts, error)
}

type noRelayCounter struct{}

func (noRelayCounter) Set(string, []relayed.Source) error { return nil }
func (noRelayCounter) Read() (relayed.Counts, error)      { return relayed.Counts{}, nil }

// applyRelayCounter keeps the table that counts traffic routed from the
// WireGuard device back into it, in total and per peer it came from
// (docs/routing.md, "Operation"); every reconcile restores it if it went
// missing and follows the peers' own prefixes as the last Apply computed
// them. A failure is reported in the status; it costs only the metrics.
func (d *Daemon) applyRelayCounter() {
	own := d.rec.OwnPrefixes()
	sources := make([]relayed.Source, 0, len(own))
	for name, ps := range own {
		sources = append(sources, relayed.Source{Name: name, Prefixes: ps})
	}
	err := d.relayed.Set(d.cfg.WGDevice, sources)
	if d.relayedErr.set(err) && err != nil {
		d.log.Warn("failed to apply the relayed-traffic counter", "error", err)
	}
}

func (d *Daemon) reconcileOnce(ctx context.Context, members []mesh.Member) {
	d.reconcileDataplane(ctx, members)
	d.maybeInstallCNI()
}

// reconcileDataplane applies the WireGuard peers, routes and NAT table for
// members and the ring, and saves the peers for the next start.
func (d *Daemon) reconcileDataplane(ctx context.Context, members []mesh.Member) {
	overlay, overlay6, _ := d.overlayIPs()
	in := d.peerInput(overlay, overlay6, members)
	// Errors are counted, logged and kept by the reconciler.
	d.rec.Apply(ctx, in)
	if !d.left.Load() {
		d.remembered.save(in, members)
	}
	d.applyNAT(overlay, overlay6, members)
	d.applyRelayCounter()
}

// applyNAT keeps the NAT table (outbound masquerade, overlay source for
// host traffic into WireGuard, masquerade to the other nodes' addresses)
// as configured; every reconcile restores it
// if it went missing. A failure is reported in the status but does not
// make the node unready: pod-to-pod traffic does not depend on it.
func (d *Daemon) applyNAT(overlay, overlay6 netip.Addr, members []mesh.Member) {
	var nodes []netip.Addr
	for _, m := range members {
		// Any state: a dead node's address costs a set element, and
		// its host may still answer.
		// Both families: each NAT table takes the addresses of its own.
		if a := m.Addr.Addr().Unmap(); m.Name != d.id.Name && a.IsValid() {
			nodes = append(nodes, a)
		}
	}
	if d.cfg.ipv6Only() {
		overlay6, overlay = overlay, netip.Addr{}
	}
	err := d.nat.Set(&nat.Config{
		Nodes:         nodes,
		ClusterRange:  d.cfg.ipv4Range(),
		Masquerade:    !d.cfg.NoMasquerade,
		NoMasquerade:  d.cfg.NoMasqueradeCIDRs,
		OverlayDevice: d.cfg.WGDevice,
		InnerDevice:   d.cfg.innerDevice(),
		OverlayIP:     overlay,
		ClusterRange6: d.cfg.ipv6Range(),
		OverlayIP6:    overlay6,
	})
	if d.natErr.set(err) && err != nil {
		d.log.Warn("failed to apply the NAT table", "error", err)
	}
}

// publicAddr is the public address a node behind NAT announces
// (Meta.PublicAddr), if it is one a data plane can send to.
func publicAddr(meta mesh.Meta) (netip.Addr, bool) {
	a, err := netip.ParseAddr(meta.PublicAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a, true
}

// dataEndpoint is where this node sends m's data plane first: for a node
// behind NAT, the public address its NAT gives it and the port it gives
// its data plane (Meta.PublicPort, DPPort when it announces none), where
// the NAT lets in what answers the node's own packets (two nodes behind
// two NATs that send to each other's public endpoint both let the other
// in: a hole punched); but the advertised address and DPPort when this
// node is behind the same NAT (the same public address: NATs rarely
// hairpin, and the two reach each other's private addresses), and for
// every other node. WireGuard then follows the endpoint the node's
// packets actually come from.
func dataEndpoint(m mesh.Member, selfPublic netip.Addr) (netip.Addr, int) {
	if pub, ok := publicAddr(m.Meta); ok && pub != selfPublic {
		if p := m.Meta.PublicPort; p > 0 && p <= 65535 {
			return pub, p
		}
		return pub, m.Meta.DPPort
	}
	return m.Addr.Addr(), m.Meta.DPPort
}

func (d *Daemon) peerInput(overlay, overlay6 netip.Addr, members []mesh.Member) peer.Input {
	key, _ := d.self.get()
	keys := d.keys.current()
	in := peer.Input{
		Self: d.id.Name, PrivateKey: key,
		ListenPort: d.cfg.DPPort, MTU: d.mtu, Keepalive: d.cfg.Keepalive,
		ClusterRange: d.cfg.IPAllocRange, OverlayIP: overlay, BridgeName: d.cfg.Bridge,
		ClusterRange6: d.cfg.IPAllocRange6, OverlayIP6: overlay6,
		Now: time.Now(),
	}
	in.Remembered, in.RememberedUntil = d.remembered.input(keys)
	in.Via = peer.Relays(d.id.Name, d.pathReports(members))
	in.E2EAddr, in.InnerDevice = d.e2e.get(), d.cfg.innerDevice()
	d.reportBadMeta(members)
	var selfPublic netip.Addr
	for _, m := range members {
		if m.Name == d.id.Name {
			selfPublic, _ = publicAddr(m.Meta)
		}
	}
	for _, m := range members {
		addr, port := dataEndpoint(m, selfPublic)
		n := peer.Node{Name: m.Name, Addr: addr, DPPort: port, State: m.State, Since: m.Since}
		if len(keys) > 0 {
			n.Secret = pairKey(keys, peerKeyIDs(keys, m.Meta.Keys))
		}
		if k, err := crypto.ParseKey(m.Meta.PublicKey); err == nil {
			n.PublicKey = k
		}
		if a, ok := probeAddr(m.Meta, d.cfg.probeRange()); ok {
			n.Probe = a
		}
		if a, ok := e2eAddrOf(m.Meta, d.cfg.probeRange()); ok {
			n.E2E = a
		}
		in.Nodes = append(in.Nodes, n)
	}
	for _, al := range d.allocators() {
		for _, r := range al.Ranges() {
			if r.Owner != "" {
				in.Ranges = append(in.Ranges, peer.RangeOwner{CIDR: r.CIDR, Owner: r.Owner})
			}
		}
		// Pods (and gateways) whose space moved under them are routed
		// to their holder (docs/ipam.md, "Held addresses are routed to
		// their holder"). Read after the ring: a pod released in
		// between is routed to its old holder until the next
		// reconcile, which costs nothing.
		for _, h := range al.HeldOutsideOwned() {
			for _, a := range h.Addrs {
				in.Held = append(in.Held, peer.HeldAddr{Holder: h.Peer, Addr: a})
			}
		}
	}
	return in
}

// connections reports the data plane's peers for status and metrics, each
// with the bytes this node relayed from it, and the relay counters they
// were read from (zero when they cannot be read); the reconciler owns what
// the peers are and the state rule.
func (d *Daemon) connections(ctx context.Context) ([]api.Connection, relayed.Counts) {
	out, err := d.rec.Connections(ctx, time.Now())
	if err != nil {
		d.log.Debug("cannot read data plane stats", "error", err)
	}
	d.estimateLatency(out)
	rc, err := d.relayed.Read()
	if err != nil {
		d.log.Debug("cannot read the relayed-traffic counters", "error", err)
		return out, relayed.Counts{}
	}
	for i := range out {
		out[i].RelayedBytes = int64(rc.Peers[out[i].Peer])
	}
	return out, rc
}

// estimateLatency fills in each connection's estimated round trip: the
// distance between this node's published coordinate and the peer's, what
// the relay choice counts (docs/routing.md, "Latency").
func (d *Daemon) estimateLatency(out []api.Connection) {
	_, meta := d.self.get()
	own, ok := reportedCoord(meta.Paths)
	if !ok {
		return
	}
	for i := range out {
		m, ok := d.members.Member(out[i].Peer)
		if !ok {
			continue
		}
		if c, ok := reportedCoord(m.Meta.Paths); ok {
			out[i].EstimatedRTTMillis = math.Round(coord.Distance(own, c)*10) / 10
		}
	}
}

// reportBadMeta logs, once per member and problem, a member whose gossip
// metadata does not parse or carries no valid WireGuard key: such a member
// gets no WireGuard peer, and without this its pods would be unreachable with
// nothing said. The record holds only current members, so it stays bounded.
func (d *Daemon) reportBadMeta(members []mesh.Member) {
	seen := make(map[string]string, len(members))
	byName := make(map[string]mesh.Member, len(members))
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
		byName[m.Name] = m
	}
	fresh := d.badMeta.record(seen)
	slices.Sort(fresh)
	for _, name := range fresh {
		d.log.Warn("peer gets no WireGuard peer: "+seen[name], "peer", name, "version", byName[name].Meta.Version)
	}
}
