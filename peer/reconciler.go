package peer

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
)

// Reconciler keeps a data plane at the config Desired computes. Apply is
// cheap when nothing changed: the data plane is only called when the desired
// config differs from the last one it accepted, or ResyncInterval after it
// last did. It is the one owner of the
// reconcile state that status and metrics report: counts, the last error
// and duration, readiness, and since when each peer has been configured.
type Reconciler struct {
	dp  fastdp.Dataplane
	log *slog.Logger
	now func() time.Time

	mu           sync.Mutex
	last         *fastdp.Config // last config the data plane accepted; nil forces the next Set
	lastSet      time.Time      // when the data plane last accepted a config
	names        map[crypto.Key]string
	since        map[crypto.Key]time.Time // when each peer of last was first configured
	applied      int64
	skipped      int64
	errors       int64
	lastErr      error
	duration     time.Duration     // of the last Apply
	ready        bool              // the data plane once accepted a config with a bridge address
	via          map[string]string // relayed nodes of last, and their relays
	e2e          map[string]bool   // the relayed nodes of last whose traffic goes end to end
	relayChanges int64
	paths        *Paths
	// own is each peer's own prefixes as of the last Apply that computed
	// a config (desiredState.own).
	own map[string][]netip.Prefix
}

// Counters are the Reconciler's running totals, for metrics and status.
type Counters struct {
	Applied, Skipped, Errors int64
	// LastError is the most recent failure, nil after a success.
	LastError error
	// LastDuration is how long the last Apply took.
	LastDuration time.Duration
	// Ready says the data plane has accepted a config that gives this node
	// its bridge address, so pods can be served.
	Ready bool
	// RelayChanges counts applied configs that moved a node's ranges to a
	// relay, to another relay or back to its direct path.
	RelayChanges int64
}

// Runs is how many times Apply ran.
func (c Counters) Runs() int64 { return c.Applied + c.Skipped + c.Errors }

// ResyncInterval is how long Apply leaves the data plane alone while the
// desired config does not change: it then sets the same config again. Set
// changes only what differs from the host, so on an intact host a resync
// only reads the WireGuard device, links and routes; on a host changed from
// outside (a WireGuard entry or a route changed by hand, `wg set`, `ip
// route del`) it restores them. Without it such a change would stand until
// the membership or a ring next changed: a WireGuard entry given another
// node's ranges could, for one, keep a routing loop (docs/routing.md,
// "While views differ"). Felix refreshes its routes on a timer for the
// same reason.
const ResyncInterval = 30 * time.Second

// NewReconciler drives dp. log may be nil.
func NewReconciler(dp fastdp.Dataplane, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{dp: dp, log: log.With("component", "peer"), now: time.Now, since: map[crypto.Key]time.Time{}, paths: NewPaths()}
}

// Apply computes the desired config for in and sets it on the data plane if
// it differs from the last one applied. It reports whether Set was called
// and succeeded. After a failure the next Apply calls Set again even with the
// same input, as the failed Set may have left the host part-way.
func (r *Reconciler) Apply(ctx context.Context, in Input) (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := r.now()
	defer func() {
		r.duration = r.now().Sub(start)
		if err != nil {
			r.errors++
			r.lastErr = err
			r.log.Warn("failed to apply data plane config", "err", err)
		}
	}()

	d, err := desired(in)
	if err != nil {
		return false, err
	}
	// Kept even when the config is unchanged: a relayed node's ranges
	// can move without changing any peer's AllowedIPs as a whole.
	r.own = d.own
	cfg, via, e2e := d.cfg, d.via, d.e2e
	same := r.last.Equal(cfg)
	if same && !adopting(r.dp) && start.Sub(r.lastSet) < ResyncInterval {
		r.skipped++
		return false, nil
	}
	names := nodeNames(in)
	if err := r.dp.Set(ctx, cfg); err != nil {
		r.last = nil
		return false, fmt.Errorf("failed to set data plane config: %w", err)
	}
	r.lastSet = start
	if !same {
		// A resync of the same config logs nothing here: the data plane
		// says what it had to restore.
		r.logChange(r.last, cfg, names)
	}
	if !maps.Equal(r.via, via) || !maps.Equal(r.e2e, e2e) {
		r.relayChanges++
		r.log.Info("relayed peers changed", "via", via, "endToEnd", slices.Sorted(maps.Keys(e2e)))
	}
	r.via, r.e2e = via, e2e
	r.trackSince(cfg, start)
	r.last, r.names = cfg, names
	r.applied++
	r.lastErr = nil
	if cfg.BridgeAddr.IsValid() {
		r.ready = true
	}
	return true, nil
}

// trackSince records when each peer of cfg was first configured and forgets
// peers cfg no longer has, so the record is bounded by the config.
func (r *Reconciler) trackSince(cfg *fastdp.Config, now time.Time) {
	keep := make(map[crypto.Key]time.Time, len(cfg.Peers))
	for _, p := range cfg.Peers {
		if t, ok := r.since[p.PublicKey]; ok {
			keep[p.PublicKey] = t
		} else {
			keep[p.PublicKey] = now
		}
	}
	r.since = keep
}

// adopting reports whether dp still keeps peers of an adopted device that
// the config did not name (fastdp.AdoptGrace): then an unchanged config is
// set again, so that they go once the grace has passed.
func adopting(dp fastdp.Dataplane) bool {
	a, ok := dp.(interface{ Adopting() bool })
	return ok && a.Adopting()
}

// OwnPrefixes returns, for each node with a peer as of the last Apply,
// the prefixes its own packets come from: its ranges and held addresses,
// not the ranges it carries as a relay (docs/routing.md, "Operation").
func (r *Reconciler) OwnPrefixes() map[string][]netip.Prefix {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.own)
}

// Paths is the tracker of the direct paths whose states status shows.
func (r *Reconciler) Paths() *Paths { return r.paths }

// Last returns a copy of the config last applied, or nil.
func (r *Reconciler) Last() *fastdp.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last.Clone()
}

// Counters returns the running totals.
func (r *Reconciler) Counters() Counters {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Counters{Applied: r.applied, Skipped: r.skipped, Errors: r.errors, LastError: r.lastErr, LastDuration: r.duration, Ready: r.ready,
		RelayChanges: r.relayChanges}
}

func nodeNames(in Input) map[crypto.Key]string {
	nodes, _ := in.nodes() // Desired has accepted in
	m := make(map[crypto.Key]string, len(nodes))
	for _, n := range nodes {
		if n.Name == in.Self {
			continue
		}
		if old, ok := m[n.PublicKey]; !ok || n.Name < old {
			m[n.PublicKey] = n.Name
		}
	}
	return m
}

// logChange logs which peers came and went, by node name. Keys other than
// public ones never reach the log.
func (r *Reconciler) logChange(prev, next *fastdp.Config, names map[crypto.Key]string) {
	had := map[crypto.Key]fastdp.Peer{}
	if prev != nil {
		for _, p := range prev.Peers {
			had[p.PublicKey] = p
		}
	}
	var added, removed, updated []string
	name := func(k crypto.Key) string {
		if n, ok := names[k]; ok {
			return n
		}
		if n, ok := r.names[k]; ok {
			return n
		}
		return k.String()
	}
	for _, p := range next.Peers {
		old, ok := had[p.PublicKey]
		switch {
		case !ok:
			added = append(added, name(p.PublicKey))
		case !slices.Equal(old.AllowedIPs, p.AllowedIPs) || old.Endpoint != p.Endpoint ||
			old.Keepalive != p.Keepalive || old.PresharedKey != p.PresharedKey:
			updated = append(updated, name(p.PublicKey))
		}
		delete(had, p.PublicKey)
	}
	for k := range had {
		removed = append(removed, name(k))
	}
	slices.Sort(removed)
	r.log.Info("applied data plane config", "peers", len(next.Peers),
		"added", added, "updated", updated, "removed", removed, "local_ranges", len(next.LocalRanges),
		"local_hosts", len(next.LocalHosts), "remote_hosts", len(next.RemoteHosts))
}
