package daemon

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/meshnet/mesh/coord"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// Route-around (docs/routing.md): every peer.ProbeInterval the path loop
// probes live peers' probe addresses through their direct WireGuard paths
// (those the path tracker says are due, at most a budget a round),
// feeds the answers to the reconciler's path tracker, and publishes the
// peers it sees down (and its own probe address) in the node metadata;
// the reconcile loop reads everyone's reports and relays through a peer
// that reaches both ends.

// openProber opens the prober and gives this node a path report to
// publish from its first metadata on. Without a data plane there is nothing
// to probe; a prober that cannot open (no CAP_NET_RAW) leaves every path
// up, as before route-around, and the node publishes no report, so it is
// neither relayed to nor through; the log says so.
func (d *Daemon) openProber() {
	if !d.cfg.hasDataplane() {
		return
	}
	p, err := fastdp.NewProber(d.cfg.probeRange().Addr().Is6())
	if err != nil {
		d.log.Warn("direct paths are not probed, so nothing is relayed around a broken one", "error", err)
		return
	}
	d.prober = p
	d.coords = coord.New(coord.DefaultConfig(), d.id.Name)
	d.coordPub, d.coordPubAt = d.coords.Get().Wire(), time.Now()
	d.self.update(func(_ *crypto.PrivateKey, m *mesh.Meta) {
		*m = m.WithPaths(mesh.PathMeta{NoRelay: d.cfg.NoRelay, Preference: d.cfg.RelayPreference, Coord: d.coordPub})
	})
}

// startPaths starts the path loop, which owns the prober from then on.
func (d *Daemon) startPaths() {
	if d.prober == nil {
		return
	}
	p := d.prober
	d.prober = nil
	d.goLoop("paths", func(ctx context.Context) {
		defer p.Close()
		d.pathLoop(ctx, p)
	})
	if d.cfg.RelayEndToEnd {
		d.goLoop("e2e-address", d.e2eLoop)
	}
}

// prober is the part of fastdp.Prober the loop uses.
type prober interface {
	Probe(targets, send []netip.Addr)
	Results() map[netip.Addr]peer.ProbeResult
	Close() error
}

func (d *Daemon) pathLoop(ctx context.Context, p prober) {
	t := time.NewTicker(peer.ProbeInterval)
	defer t.Stop()
	for {
		members := d.members.Members()
		d.probeOnce(p, members, time.Now())
		// Gossip to a member takes the data plane's relay (docs/routing.md,
		// "Gossip through relays").
		d.members.SetRelays(peer.Relays(d.id.Name, d.pathReports(members)))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeOnce reads the answers to the previous rounds, sends the next one,
// and publishes what changed.
func (d *Daemon) probeOnce(p prober, members []mesh.Member, now time.Time) {
	targets := map[netip.Addr]string{}
	probed := members
	if _, ok := d.ipam.OverlayIP(); !ok {
		// Without an overlay IP, probes would leave without a source
		// the others route back: every path would look down.
		probed = nil
	}
	for _, m := range probed {
		if m.Self || !m.State.Live() {
			continue
		}
		if a, ok := probeAddr(m.Meta, d.cfg.probeRange()); ok {
			targets[a] = m.Name
		}
	}
	results := p.Results()
	byName := make(map[string]peer.ProbeResult, len(targets))
	addrOf := make(map[string]netip.Addr, len(targets))
	addrs := make([]netip.Addr, 0, len(targets))
	for a, name := range targets {
		byName[name] = results[a]
		addrOf[name] = a
		addrs = append(addrs, a)
	}
	paths := d.rec.Paths()
	d.sampleLatency(probed, paths.Observe(now, byName))
	due := paths.Due(now)
	send := make([]netip.Addr, 0, len(due))
	for _, name := range due {
		send = append(send, addrOf[name])
	}
	p.Probe(addrs, send)
	d.publishPaths(now, members)
}

// sampleLatency moves this node's coordinate by the round trips of the
// probes answered since the last round (fresh, by peer), each against the
// coordinate the peer publishes; a peer that publishes none (an earlier
// release) or one out of bounds gives no sample. Peers that are no longer
// probed are forgotten.
func (d *Daemon) sampleLatency(members []mesh.Member, fresh map[string]time.Duration) {
	if d.coords == nil {
		return
	}
	byName := make(map[string]mesh.Member, len(members))
	for _, m := range members {
		byName[m.Name] = m
	}
	d.coords.Retain(func(name string) bool { m, ok := byName[name]; return ok && m.State.Live() })
	for name, rtt := range fresh {
		remote, ok := reportedCoord(byName[name].Meta.Paths)
		if !ok {
			continue
		}
		if err := d.coords.Update(name, remote, rtt); err != nil {
			d.log.Debug("round trip not used for the coordinate", "peer", name, "error", err)
		}
	}
}

// publishedCoord is the coordinate to publish at now: the last published
// one until the coordinate moved peer.CoordRepublishMove from it, and at
// most one change every peer.CoordRepublishInterval of the mesh's members
// (its live ones, this node included). Every change can move
// relayed traffic (it changes the estimate of this node's links), so the
// published coordinate follows real changes of latency, not the jitter of
// the samples.
func (d *Daemon) publishedCoord(now time.Time, members int) []int {
	if d.coords == nil {
		return nil
	}
	cur := d.coords.Get()
	pub, ok := coord.FromWire(d.coordPub)
	if !ok || (coord.Moved(pub, cur) >= float64(peer.CoordRepublishMove)/float64(time.Millisecond) &&
		now.Sub(d.coordPubAt) >= peer.CoordRepublishInterval(members)) {
		d.coordPub, d.coordPubAt = cur.Wire(), now
	}
	return d.coordPub
}

// publishPaths announces this node's path report when it changed: its
// overlay IP as probe address, the peers it sees down, --no-relay,
// --relay-preference and its network coordinate.
func (d *Daemon) publishPaths(now time.Time, members []mesh.Member) {
	live := 0
	for _, m := range members {
		if m.Self || m.State.Live() {
			live++
		}
	}
	want := mesh.PathMeta{Down: d.downPaths(), NoRelay: d.cfg.NoRelay, Preference: d.cfg.RelayPreference, Coord: d.publishedCoord(now, live)}
	if a, ok := d.ipam.OverlayIP(); ok {
		want.Probe = a.String()
	}
	if a := d.e2e.get(); a.IsValid() {
		want.E2E = a.String()
	}
	var changed, coordOnly bool
	meta := d.self.update(func(_ *crypto.PrivateKey, m *mesh.Meta) {
		next := m.WithPaths(want)
		changed = m.Paths == nil || !m.Paths.Equal(*next.Paths)
		if changed {
			coordOnly = m.Paths != nil && m.Paths.EqualBesidesCoord(*next.Paths)
			*m = next
		}
	})
	if !changed {
		return
	}
	if err := d.members.UpdateMeta(meta); err != nil {
		d.log.Warn("failed to announce this node's paths", "error", err)
	}
	if coordOnly {
		d.log.Debug("network coordinate republished", "coordinate", meta.Paths.Coord)
	} else {
		d.log.Info("direct paths changed", "down", meta.Paths.Down, "overflow", meta.Paths.Overflow)
	}
	d.kickReconcile()
}

// reportedCoord is the network coordinate a path report carries, if it
// carries one in bounds: the one reading of a member's coordinate, for its
// samples, the relay choice and status.
func reportedCoord(p *mesh.PathMeta) (coord.Coordinate, bool) {
	if p == nil {
		return coord.Coordinate{}, false
	}
	return coord.FromWire(p.Coord)
}

// probeAddr is the member's probe address, if it reports one this node can
// use: an address in cluster (of its family, so that of the prober's), so
// that no member can make the others send probes elsewhere.
func probeAddr(m mesh.Meta, cluster netip.Prefix) (netip.Addr, bool) {
	if m.Paths == nil {
		return netip.Addr{}, false
	}
	return addrIn(m.Paths.Probe, cluster)
}

// addrIn parses an address a member reports, if it is one in cluster.
func addrIn(s string, cluster netip.Prefix) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || !cluster.Contains(a) {
		return netip.Addr{}, false
	}
	return a, true
}

// pathReports turns the members' metadata into the relay choice's input;
// this node's own report is the one it publishes (d.self), which may be
// ahead of what gossip shows of it.
func (d *Daemon) pathReports(members []mesh.Member) []peer.PathReport {
	_, meta := d.self.get()
	self := meta.Paths
	out := make([]peer.PathReport, 0, len(members))
	for _, m := range members {
		paths := m.Meta.Paths
		if m.Name == d.id.Name {
			paths = self
		}
		r := peer.PathReport{Name: m.Name, Live: m.State.Live() || m.Name == d.id.Name}
		if paths != nil && !paths.Overflow {
			r.Known, r.Down, r.NoRelay, r.Preference = true, paths.Down, paths.NoRelay, paths.Preference
			if c, ok := reportedCoord(paths); ok {
				r.Coord = &c
			}
		}
		out = append(out, r)
	}
	return out
}

// downPaths is what this node publishes as down: the peers whose direct
// WireGuard path fails its probes, and those it recently failed to reach
// on their gossip port directly (mesh.DirectFailures). The second covers
// the peers the probes cannot judge: one of the two has no overlay IP yet,
// as a node that joins a far site before it has any space, which would
// otherwise ask a donor it cannot reach again and again. A node that
// cannot reach another's gossip port almost never reaches its data plane.
func (d *Daemon) downPaths() []string {
	down := d.rec.Paths().Down()
	for _, n := range d.members.DirectFailures() {
		if !slices.Contains(down, n) {
			down = append(down, n)
		}
	}
	slices.Sort(down)
	return down
}
