package peer

import (
	"slices"
	"sync"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/fastdp"
)

// Path health and relay choice (docs/routing.md). A node probes each peer's
// probe address (its overlay IP) through the direct WireGuard path every
// ProbeInterval; the Paths tracker turns the answers into one state per
// peer, with hysteresis; the node publishes the peers it sees down in its
// gossip metadata, and Relays picks, from everyone's reports, the relay
// for each peer whose direct path is down.
const (
	// ProbeInterval is how often each peer is probed through its direct
	// path. An echo request and its reply are 44 bytes each way on the
	// overlay (108 bytes on the wire, with WireGuard's padding and headers
	// and UDP/IPv4's), so a node spends about 110 B/s each way per peer.
	ProbeInterval = time.Second
	// PathDownAfter is how long probes must go unanswered for a direct
	// path to count as down: five probes in a row, so that a lost packet or
	// a slow scheduler does not move traffic.
	PathDownAfter = 5 * time.Second
	// PathUpAfter is how long probes must be answered, without a gap of
	// PathDownAfter, for a path that was down to count as up again: the
	// other half of the hysteresis, so that a flapping path does not move
	// traffic back and forth.
	PathUpAfter = 10 * time.Second
)

// ProbeResult is what the data plane's prober saw of one probe address.
type ProbeResult = fastdp.ProbeResult

// pathRecord is what Paths keeps of one peer.
type pathRecord struct {
	since       time.Time // first observed
	lastReply   time.Time
	streakStart time.Time // first reply of the current run without a gap of PathDownAfter
	rtt         time.Duration
	down        bool
}

// Paths tracks the direct path to each peer from its probe results. It is
// the one place that decides whether a direct path is up (pathDown).
// Safe for concurrent use.
type Paths struct {
	mu    sync.Mutex
	paths map[string]*pathRecord
}

// NewPaths returns an empty tracker.
func NewPaths() *Paths { return &Paths{paths: map[string]*pathRecord{}} }

// pathDown is the one rule for a direct path: down once no probe has been
// answered for PathDownAfter (counted from the first observation while
// none ever was); up again once answered without such a gap for
// PathUpAfter. A path starts up, so a node that starts does not relay
// before its probes had their chance.
func pathDown(r *pathRecord, now time.Time) bool {
	last := r.lastReply
	if last.IsZero() {
		last = r.since
	}
	if now.Sub(last) >= PathDownAfter {
		return true
	}
	if r.down {
		return r.streakStart.IsZero() || now.Sub(r.streakStart) < PathUpAfter
	}
	return false
}

// Observe takes the prober's results by peer name at now. Peers absent
// from results are forgotten (they have no probe address, or are gone),
// which keeps the tracker bounded by the peers probed.
func (p *Paths) Observe(now time.Time, results map[string]ProbeResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.paths {
		if _, ok := results[name]; !ok {
			delete(p.paths, name)
		}
	}
	for name, res := range results {
		r := p.paths[name]
		if r == nil {
			r = &pathRecord{since: now}
			p.paths[name] = r
		}
		if res.LastReply.After(r.lastReply) {
			prev := r.lastReply
			if prev.IsZero() {
				prev = r.since
			}
			// A gap of PathDownAfter ends a run of answers: coming
			// back up needs a new one.
			if r.streakStart.IsZero() || res.LastReply.Sub(prev) >= PathDownAfter {
				r.streakStart = res.LastReply
			}
			r.lastReply, r.rtt = res.LastReply, res.RTT
		}
		r.down = pathDown(r, now)
	}
}

// Down returns the peers whose direct path is down, sorted: what this node
// publishes.
func (p *Paths) Down() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for name, r := range p.paths {
		if r.down {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// State returns the direct path's state to name and the last round trip
// through it (0 when none was answered); "" when name is not probed.
func (p *Paths) State(name string) (api.PathState, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.paths[name]
	switch {
	case r == nil:
		return "", 0
	case r.down:
		return api.PathDown, r.rtt
	}
	return api.PathUp, r.rtt
}

// PathReport is one node's published report of its direct paths, as the
// relay choice reads it (the daemon converts gossip metadata into it).
type PathReport struct {
	Name string
	// Live: alive or suspect (api.MemberState.Live); only live nodes
	// relay.
	Live bool
	// Known: the node sent a report this release understands. A node of
	// the previous release, or one whose list overflowed, is never relayed
	// to nor through: it would not route the other way round.
	Known bool
	// Down names the peers whose direct path the node sees down.
	Down []string
	// NoRelay: the node refuses to carry others' traffic (--no-relay).
	NoRelay bool
}

// Relays returns, for each peer whose direct path from self is down, the
// name of the relay that carries its ranges: a live node that reaches both
// directly and relays. A pair's path counts as down when either end reports
// it down (pairUp), so both ends see the same graph from the same gossip;
// among the relays, the smallest name wins, so that both ends pick the same
// one, as routing through a relay needs (docs/routing.md). Peers whose path
// is up, or that no relay reaches, are not in the result: they stay
// direct, and the direct path keeps being tried.
func Relays(self string, reports []PathReport) map[string]string {
	byName := make(map[string]PathReport, len(reports))
	for _, r := range reports {
		if r.Name != "" {
			byName[r.Name] = r
		}
	}
	me, ok := byName[self]
	if !ok || !me.Known {
		return nil
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	out := map[string]string{}
	for _, x := range names {
		dst := byName[x]
		if x == self || !dst.Known || pairUp(me, dst) {
			continue
		}
		for _, r := range names {
			via := byName[r]
			if r == self || r == x || !via.Live || !via.Known || via.NoRelay {
				continue
			}
			if pairUp(me, via) && pairUp(via, dst) {
				out[x] = r
				break
			}
		}
	}
	return out
}

// pairUp says whether the direct path between a and b works as their
// reports tell: neither end sees it down.
func pairUp(a, b PathReport) bool {
	return !slices.Contains(a.Down, b.Name) && !slices.Contains(b.Down, a.Name)
}
