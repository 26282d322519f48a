package peer

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/coord"
	"github.com/meshnet/mesh/fastdp"
)

// Path health and relay choice (docs/routing.md). A node probes its peers'
// probe addresses (their overlay IPs) through the direct WireGuard paths,
// one round every ProbeInterval, at most ProbeBudget probes a round; the
// Paths tracker chooses whom each round probes and turns the answers into
// one state per peer, with hysteresis; the node publishes the peers it sees
// down in its gossip metadata, and Relays picks, from everyone's reports,
// the relay for each peer whose direct path is down.
const (
	// ProbeInterval is the time between two probe rounds, and how often
	// a path in question (see watched) is probed. An echo request and its
	// reply are 44 bytes each way on the overlay (108 bytes on the wire,
	// with WireGuard's padding and headers and UDP/IPv4's).
	ProbeInterval = time.Second
	// ProbeBudget bounds the probes of one round: at most ProbeBudget to
	// healthy paths and ProbeBudget to paths in question (watched). Up to
	// ProbeBudget peers, each is probed every round; beyond, a healthy
	// path is probed every ceil(peers/ProbeBudget) rounds (probeEvery),
	// and the paths in question every round while they are ProbeBudget or
	// fewer. So a node's probing costs the same with 10 peers as with
	// 1 000 (at most about 2.2 KB/s each way), and N simulated hosts on one
	// machine carry about N·ProbeBudget probes a second rather than N²
	// (measured on 2 cores: at 30 hosts, one probe a second to every peer
	// took half a core of the data planes; docs/scale.md). The price is a
	// later first doubt of a healthy path: up to probeEvery before its
	// first probe goes unanswered.
	ProbeBudget = 10
	// PathDownAfter and PathDownProbes make a direct path that answered
	// before count as down: no answer for PathDownAfter and to the last
	// PathDownProbes probes in a row. Both, so that a lost packet does not
	// move traffic, nor a node whose own loop stalled (a loaded host that
	// ran no probe round for seconds sees every path silent for that long,
	// but it has sent no probe that could go unanswered).
	PathDownAfter  = 5 * time.Second
	PathDownProbes = 5
	// PathFirstAnswerWithin is how long a path that never answered has
	// before it counts as down (with PathDownProbes unanswered probes as
	// well). Longer than PathDownAfter: a path to a node that just joined
	// only answers once the far end has learnt of this node through gossip,
	// put it in its WireGuard configuration and completed a handshake,
	// which on a loaded host takes more than five seconds; calling such a
	// path down would relay the newcomer's traffic and gossip for no
	// reason (docs/routing.md, "The signal: a probe through the direct path").
	PathFirstAnswerWithin = 30 * time.Second
	// PathUpAfter is how long probes must be answered, without a gap of
	// PathDownAfter, for a path that was down to count as up again: the
	// other half of the hysteresis, so that a flapping path does not move
	// traffic back and forth.
	PathUpAfter = 10 * time.Second
	// PathSlowFactor and PathDownAfterMax stretch PathDownAfter (and
	// PathFirstAnswerWithin) when this node's paths answer slowly: a path
	// counts as down only after a silence of PathSlowFactor times the
	// median round trip of the paths that answered within
	// PathDownAfterMax, at most PathDownAfterMax. A median round trip of
	// seconds through direct paths is not the network's: it is a machine
	// too loaded to run the data planes or the prober in time (a real
	// link takes tens of milliseconds, the far side of the world a few
	// hundred), and there every path is slow together; calling the
	// slowest of them down moves their traffic to relays that are just as
	// slow and republishes the node's report, a metadata change for every
	// member, which loads the machine more (docs/scale.md: at 100
	// simulated hosts on two cores path reports changed 2 469 times). The
	// median, so that one slow or hostile peer (a peer can delay its own
	// answers) does not stretch the verdicts on the others. Below a median
	// of PathDownAfter/PathSlowFactor (1.25 s) nothing is stretched, so a
	// broken path is found as fast as before.
	PathSlowFactor   = 4
	PathDownAfterMax = time.Minute
)

// ProbeResult is what the data plane's prober saw of one probe address.
type ProbeResult = fastdp.ProbeResult

// pathRecord is what Paths keeps of one peer.
type pathRecord struct {
	since       time.Time // first observed
	lastReply   time.Time
	streakStart time.Time // first reply of the current run without a gap of the silence (Paths.silence)
	rtt         time.Duration
	// missed counts the probes sent since the last answer whose round
	// ended unanswered (an Observe after a Due that chose the peer).
	missed int
	down   bool
	sent   time.Time // the last probe chosen by Due; zero when none yet
	out    bool      // a probe went out in the round the next Observe ends
}

// watched is whether the path is in question: its last probe went
// unanswered, it is down, or it never answered. Such a path is probed every
// round, so that its verdict (down, or up again) does not wait for its turn.
func watched(r *pathRecord) bool { return r.missed > 0 || r.down || r.lastReply.IsZero() }

// probeEvery is how often a healthy path is probed when that many paths are
// tracked: every round up to ProbeBudget peers, then in turn.
func probeEvery(peers int) time.Duration {
	return time.Duration(max(1, (peers+ProbeBudget-1)/ProbeBudget)) * ProbeInterval
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

// pathDown is the one rule for a direct path: down once the last
// PathDownProbes probes went unanswered and no answer came for after, or,
// for a path that never answered, for PathFirstAnswerWithin (or after, if
// longer) since it was first observed; up again once answered without a
// gap of after for PathUpAfter. after is the silence of Paths.silence:
// PathDownAfter unless this node's paths answer slowly. A path starts up,
// so a node that starts, or a peer that just joined, is not relayed
// before its probes had their chance.
func pathDown(r *pathRecord, now time.Time, after time.Duration) bool {
	silent := r.missed >= PathDownProbes
	if r.lastReply.IsZero() {
		silent = silent && now.Sub(r.since) >= max(PathFirstAnswerWithin, after)
	} else {
		silent = silent && now.Sub(r.lastReply) >= after
	}
	if silent {
		return true
	}
	if r.down {
		return r.streakStart.IsZero() || now.Sub(r.streakStart) < PathUpAfter
	}
	return false
}

// Observe takes the prober's results by peer name at now, for every peer
// to probe. The caller calls it once per probe round, then Due, then sends
// the probes Due chose; so each Observe ends the round of the probes chosen
// by the Due before it, and only those can go unanswered. Peers absent from
// results are forgotten (they have no probe address, or are gone), which
// keeps the tracker bounded by the peers probed. It returns the round
// trips of the answers new since the last Observe, by peer: the samples of
// this node's network coordinate.
func (p *Paths) Observe(now time.Time, results map[string]ProbeResult) (fresh map[string]time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.paths {
		if _, ok := results[name]; !ok {
			delete(p.paths, name)
		}
	}
	// A gap of the silence that makes a path down ends a run of
	// answers: coming back up needs a new one.
	gap := p.silence(now)
	for name, res := range results {
		r := p.paths[name]
		if r == nil {
			r = &pathRecord{since: now}
			p.paths[name] = r
		} else if r.out {
			r.missed++
		}
		r.out = false
		if res.LastReply.After(r.lastReply) {
			r.missed = 0
			prev := r.lastReply
			if prev.IsZero() {
				prev = r.since
			}
			if r.streakStart.IsZero() || res.LastReply.Sub(prev) >= gap {
				r.streakStart = res.LastReply
			}
			r.lastReply, r.rtt = res.LastReply, res.RTT
			if fresh == nil {
				fresh = map[string]time.Duration{}
			}
			fresh[name] = res.RTT
		}
	}
	// The verdicts after every answer of the round, which the silence
	// they are judged by depends on.
	after := p.silence(now)
	for _, r := range p.paths {
		r.down = pathDown(r, now, after)
	}
	return fresh
}

// silence is how long a path that answered before must be silent to count
// as down at now: PathDownAfter, stretched to PathSlowFactor times the
// median round trip of the paths that answered within PathDownAfterMax,
// at most PathDownAfterMax. Called with p.mu held.
func (p *Paths) silence(now time.Time) time.Duration {
	var rtts []time.Duration
	for _, r := range p.paths {
		if !r.lastReply.IsZero() && now.Sub(r.lastReply) < PathDownAfterMax {
			rtts = append(rtts, r.rtt)
		}
	}
	if len(rtts) == 0 {
		return PathDownAfter
	}
	slices.Sort(rtts)
	// The lower median: of two paths the quicker, so that in a mesh of
	// three one slow peer does not stretch the verdict on the other.
	return min(PathDownAfterMax, max(PathDownAfter, PathSlowFactor*rtts[(len(rtts)-1)/2]))
}

// Silence is the silence after which a direct path that answered before
// counts as down at now: PathDownAfter unless this node's paths have
// lately answered slowly (PathSlowFactor).
func (p *Paths) Silence(now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.silence(now)
}

// Due returns the peers to probe in the round starting at now, sorted, and
// notes that a probe went out to each. Those whose turn has come are
// chosen in two queues of ProbeBudget each, oldest probe first: the paths
// in question (watched), whose turn comes every round, and the healthy
// ones, whose turn comes every probeEvery. Two queues, so that a healthy
// path's turn does not delay a verdict in progress, and a mesh with many
// paths in question (a partition, a node's first seconds) still probes
// its healthy ones. A turn comes half an interval early, so that a
// ticker's jitter does not skip a round.
func (p *Paths) Due(now time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	every := probeEvery(len(p.paths))
	type cand struct {
		name string
		sent time.Time
	}
	var inQuestion, healthy []cand
	for name, r := range p.paths {
		switch {
		case watched(r):
			if r.sent.IsZero() || now.Sub(r.sent) >= ProbeInterval/2 {
				inQuestion = append(inQuestion, cand{name, r.sent})
			}
		case r.sent.IsZero() || now.Sub(r.sent) >= every-ProbeInterval/2:
			healthy = append(healthy, cand{name, r.sent})
		}
	}
	var out []string
	for _, due := range [][]cand{inQuestion, healthy} {
		slices.SortFunc(due, func(a, b cand) int {
			return cmp.Or(a.sent.Compare(b.sent), strings.Compare(a.name, b.name))
		})
		for _, c := range due[:min(len(due), ProbeBudget)] {
			r := p.paths[c.name]
			r.sent, r.out = now, true
			out = append(out, c.name)
		}
	}
	slices.Sort(out)
	return out
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
	// Preference (--relay-preference): among equally short paths of the
	// same latency, the one whose least preferred relay is more preferred
	// wins; 0 for a node that publishes none.
	Preference int
	// Coord is the node's published network coordinate (package coord),
	// nil when it publishes none: a node of an earlier release, or one
	// whose metadata had no room. Latency counts in the choice only
	// while every reporting node publishes one (Relays).
	Coord *coord.Coordinate
}

// LatencyStep is the unit in which a link's estimated round trip counts
// in the relay choice: the estimate (coord.Distance of the two ends'
// coordinates) rounded down to whole steps. Links within a LAN, or
// within a site, all count 0 and tie, so that --relay-preference and the
// names decide there as before; a slow link or a far site counts. Coarse
// steps also keep an estimate's jitter from moving traffic.
const LatencyStep = 10 * time.Millisecond

// A node republishes its coordinate once it moved CoordRepublishMove from
// the one it published, and at most every CoordRepublishEvery: a change
// can move relayed traffic (it changes the estimates of the node's links),
// so what is published follows real changes of latency, not the samples'
// jitter. Half a LatencyStep: a link's count changes by a step only after
// its ends moved that far together.
//
// In a large mesh the interval grows with the members
// (CoordRepublishInterval): each republication is a metadata change that
// every member receives and gossips on, so N nodes republishing every 30 s
// cost the mesh O(N²) messages; at 100 simulated hosts they filled
// memberlist's queues (docs/scale.md).
const (
	CoordRepublishMove  = LatencyStep / 2
	CoordRepublishEvery = 30 * time.Second
	// CoordRepublishPerMember keeps the mesh's coordinate
	// republications to about one a second whatever its size.
	CoordRepublishPerMember = time.Second
)

// CoordRepublishInterval is the shortest time between two republications
// of a node's coordinate in a mesh of members nodes: CoordRepublishEvery,
// or CoordRepublishPerMember per member beyond 30 members.
func CoordRepublishInterval(members int) time.Duration {
	return max(CoordRepublishEvery, time.Duration(members)*CoordRepublishPerMember)
}

// latencySteps is the link between a and b's cost in LatencySteps.
func latencySteps(a, b *coord.Coordinate) int {
	d := coord.Distance(*a, *b) // ms, bounded by the coordinates' bounds
	return int(d / float64(LatencyStep/time.Millisecond))
}

// Relays returns, for each peer whose direct path from self is down and
// that some chain of relays reaches, the next hop towards it: the direct
// peer whose WireGuard entry carries its ranges. Every node computes it
// from its own position in the same graph (docs/routing.md, "More than one
// hop"):
//
//   - the direct path between two nodes that both report counts as up
//     unless either end reports it down, so both ends of a pair see the
//     same edge;
//   - a relay (any node of a path but its two ends) is live, reports, and
//     does not run --no-relay;
//   - among the paths with the fewest hops, the one with the lowest
//     estimated latency (the sum of its links' latencySteps, counted only
//     while every reporting node publishes a coordinate, so that all
//     nodes count it or none does), then the one whose set of relays is
//     best wins, sets compared by their worst relay where they differ
//     (relayRank: the lower preference, then the larger name). Two
//     different shortest paths between the same ends never have the same
//     set of relays (each node of a shortest path sits at its distance
//     from the start), so the best path is unique; it is the same read
//     from either end (a link's latency is the same both ways), and
//     every part of it is the best path between its own ends (each part
//     of the cost adds up along the path). That makes each node's next hop continue the path its
//     predecessor chose, and the way back the same path reversed, which
//     WireGuard needs: it accepts a packet only from the peer whose
//     AllowedIPs hold its source.
//
// Peers whose direct path is up are not in the result (the direct path is
// the only one-hop path), nor are peers no path reaches: they stay direct,
// and the direct path keeps being tried.
func Relays(self string, reports []PathReport) map[string]string {
	byName := make(map[string]PathReport, len(reports))
	for _, r := range reports {
		if r.Name != "" && r.Known {
			byName[r.Name] = r
		}
	}
	if _, ok := byName[self]; !ok {
		return nil
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	// Index nodes by rank, best relay first: a path's cost below is the
	// set of its relays' indices.
	slices.SortFunc(names, func(a, b string) int { return relayRank(byName[a], byName[b]) })
	n := len(names)
	idx := make(map[string]int, n)
	for i, name := range names {
		idx[name] = i
	}
	// down[i] holds the indices of the nodes whose direct path to i is
	// down by either end's report.
	down := make([]map[int]bool, n)
	for i := range down {
		down[i] = map[int]bool{}
	}
	anyDown := false
	for i, name := range names {
		for _, d := range byName[name].Down {
			if j, ok := idx[d]; ok && j != i {
				down[i][j], down[j][i] = true, true
				anyDown = true
			}
		}
	}
	if !anyDown {
		// Every path is direct, the common case on every reconcile: the
		// search below would only find that.
		return map[string]string{}
	}
	relays := func(i int) bool { r := byName[names[i]]; return r.Live && !r.NoRelay }
	withLatency := true
	for _, name := range names {
		withLatency = withLatency && byName[name].Coord != nil
	}
	latency := func(u, v int) int {
		if !withLatency {
			return 0
		}
		return latencySteps(byName[names[u]].Coord, byName[names[v]].Coord)
	}

	// Dijkstra from self over the cost (hops, latency, set of relays). The set is
	// a bitmap compared as a binary number, highest index (worst relay)
	// first: the sum of 2^index over the relays, so the cost adds up along
	// a path as Dijkstra needs.
	src := idx[self]
	cost := make([]pathCost, n)
	done := make([]bool, n)
	next := make([]int, n) // first hop from self; -1: unreached
	for i := range next {
		next[i] = -1
	}
	cost[src] = pathCost{set: make([]uint64, (n+63)/64)}
	next[src] = src
	for {
		u := -1
		for i := range n {
			if !done[i] && next[i] >= 0 && (u < 0 || cost[i].less(cost[u])) {
				u = i
			}
		}
		if u < 0 {
			break
		}
		done[u] = true
		if u != src && !relays(u) {
			continue // an end, never a relay
		}
		for v := range n {
			if done[v] || v == u || down[u][v] {
				continue
			}
			lat := latency(u, v)
			if next[v] < 0 || cost[u].throughLess(u, u != src, lat, cost[v]) {
				cost[v] = cost[u].through(u, u != src, lat)
				if u == src {
					next[v] = v
				} else {
					next[v] = next[u]
				}
			}
		}
	}
	out := map[string]string{}
	for v := range n {
		if v != src && next[v] >= 0 && next[v] != v {
			out[names[v]] = names[next[v]]
		}
	}
	return out
}

// relayRank orders nodes as relays, best first: the higher preference,
// then the smaller name.
func relayRank(a, b PathReport) int {
	if c := cmp.Compare(b.Preference, a.Preference); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// pathCost is a path's cost: its hops, then its latency in LatencySteps,
// then the set of its relays (bit i: the node of rank i), compared as a
// binary number.
type pathCost struct {
	hops int
	lat  int
	set  []uint64
}

func (c pathCost) less(o pathCost) bool {
	if c.hops != o.hops {
		return c.hops < o.hops
	}
	if c.lat != o.lat {
		return c.lat < o.lat
	}
	for w := len(c.set) - 1; w >= 0; w-- {
		if c.set[w] != o.set[w] {
			return c.set[w] < o.set[w]
		}
	}
	return false
}

// throughLess says whether c.through(u, relay, lat) is less than o,
// without building it: Dijkstra compares far more often than it improves.
func (c pathCost) throughLess(u int, relay bool, lat int, o pathCost) bool {
	if c.hops+1 != o.hops {
		return c.hops+1 < o.hops
	}
	if c.lat+lat != o.lat {
		return c.lat+lat < o.lat
	}
	for w := len(c.set) - 1; w >= 0; w-- {
		x := c.set[w]
		if relay && u/64 == w {
			x |= 1 << (u % 64)
		}
		if x != o.set[w] {
			return x < o.set[w]
		}
	}
	return false
}

// through is the cost one hop further from node u, over a link of lat
// LatencySteps; u counts as a relay when relay is set.
func (c pathCost) through(u int, relay bool, lat int) pathCost {
	set := slices.Clone(c.set)
	if relay {
		set[u/64] |= 1 << (u % 64)
	}
	return pathCost{hops: c.hops + 1, lat: c.lat + lat, set: set}
}
