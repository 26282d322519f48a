package peer

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/fastdp/fastdptest"
)

// The direct path's state follows the probes with hysteresis: down only
// after PathDownAfter and PathDownProbes rounds without an answer
// (PathFirstAnswerWithin for a path that never answered), up again only
// after PathUpAfter of answers without such a gap. Each step is one probe
// round (round: Observe, then Due).
func TestPathsHysteresis(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 4, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	type step struct {
		at        float64 // seconds after t0
		lastReply float64 // seconds after t0; negative: none yet
		want      api.PathState
	}
	// rounds returns one step a second over [from, to], all with the same
	// last reply and state.
	rounds := func(from, to, lastReply float64, want api.PathState) []step {
		var out []step
		for s := from; s <= to; s++ {
			out = append(out, step{s, lastReply, want})
		}
		return out
	}
	cat := func(parts ...[]step) []step { return slices.Concat(parts...) }
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "a path that never answered has thirty seconds", steps: cat(
			rounds(0, 29, -1, api.PathUp), rounds(30, 31, -1, api.PathDown))},
		{name: "answered stays up", steps: cat(
			rounds(0, 0, -1, api.PathUp), []step{{1, 1, api.PathUp}, {5, 5, api.PathUp}, {9, 9, api.PathUp}})},
		{name: "a few lost probes do not move it", steps: cat(
			rounds(1, 4, 1, api.PathUp), []step{{5, 5, api.PathUp}})},
		{name: "down after five unanswered rounds over five seconds", steps: cat(
			rounds(1, 5, 1, api.PathUp), []step{{5.9, 1, api.PathUp}, {6, 1, api.PathDown}})},
		{name: "a stalled loop is not a silent path", steps: []step{
			// The node ran no round for 20 s: every path looks silent
			// for that long, but only one probe went unanswered.
			{1, 1, api.PathUp}, {21, 1, api.PathUp}, {22, 1, api.PathUp}, {23, 23, api.PathUp}}},
		{name: "a slow loop needs five unanswered rounds", steps: []step{
			{1, 1, api.PathUp}, {4, 1, api.PathUp}, {7, 1, api.PathUp}, {10, 1, api.PathUp},
			{13, 1, api.PathUp}, {16, 1, api.PathDown}}},
		{name: "up again only after ten seconds of answers", steps: cat(
			rounds(1, 6, 1, api.PathUp)[:5], []step{{6, 1, api.PathDown}},
			[]step{{20, 20, api.PathDown}, {24, 24, api.PathDown},
				{28, 28, api.PathDown}, {29.9, 29.9, api.PathDown}, {30, 30, api.PathUp}})},
		{name: "a gap restarts the run", steps: cat(
			rounds(1, 5, 1, api.PathUp), []step{{6, 1, api.PathDown}, {20, 20, api.PathDown}},
			rounds(21, 28, 20, api.PathDown), []step{{29, 24, api.PathDown}, {30, 30, api.PathDown},
				{34, 34, api.PathDown}, {38, 38, api.PathDown}, {39.9, 39.9, api.PathDown}, {40, 40, api.PathUp}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPaths()
			for _, s := range tt.steps {
				res := ProbeResult{RTT: time.Millisecond}
				if s.lastReply >= 0 {
					res.LastReply = at(s.lastReply)
				}
				round(p, at(s.at), map[string]ProbeResult{"b": res})
				got, _ := p.State("b")
				if got != s.want {
					t.Fatalf("at %vs (last reply %vs): %q, want %q", s.at, s.lastReply, got, s.want)
				}
				if down := p.Down(); (s.want == api.PathDown) != (len(down) == 1 && down[0] == "b") {
					t.Fatalf("at %vs: Down() = %v with state %q", s.at, down, got)
				}
			}
		})
	}
}

// When this node's paths answer slowly (a machine too loaded to run its
// data planes in time), a path must be silent PathSlowFactor times their
// median round trip to count as down, at most PathDownAfterMax; one slow
// or hostile peer among quick ones stretches nothing.
func TestPathsSlowAnswersStretchSilence(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tests := []struct {
		name string
		// rtts are the round trips of the peers that keep answering
		// every round; b answers (in 1 ms) only at 1 s.
		rtts []time.Duration
		// never: b never answers at all.
		never bool
		// only: how many of the others answer; all when 0.
		only         int
		silence      time.Duration
		upTo, downAt float64 // b is up at upTo and down from downAt
	}{
		{name: "quick answers: five seconds", rtts: []time.Duration{time.Millisecond, 2 * time.Millisecond, time.Millisecond, 3 * time.Millisecond},
			silence: PathDownAfter, upTo: 5.9, downAt: 6},
		{name: "a far site below the threshold stretches nothing", rtts: []time.Duration{300 * time.Millisecond, 300 * time.Millisecond, 1200 * time.Millisecond, time.Millisecond},
			silence: PathDownAfter, upTo: 5.9, downAt: 6},
		{name: "every path slow: four times the median", rtts: []time.Duration{3 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second},
			silence: 12 * time.Second, upTo: 12.9, downAt: 13},
		{name: "of two paths the quicker counts", rtts: []time.Duration{50 * time.Second, 0, 0, 0}, only: 1,
			silence: PathDownAfter, upTo: 5.9, downAt: 6},
		{name: "one slow peer among quick ones stretches nothing", rtts: []time.Duration{50 * time.Second, time.Millisecond, time.Millisecond, time.Millisecond},
			silence: PathDownAfter, upTo: 5.9, downAt: 6},
		{name: "stretched at most to a minute", rtts: []time.Duration{30 * time.Second, 40 * time.Second, 50 * time.Second, 50 * time.Second},
			silence: PathDownAfterMax, upTo: 60.9, downAt: 61},
		{name: "a path that never answered: the longer of thirty seconds and the silence", never: true,
			rtts:    []time.Duration{10 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second},
			silence: 40 * time.Second, upTo: 39.9, downAt: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPaths()
			others := []string{"a", "c", "d", "e"}
			if tt.only > 0 {
				others = others[:tt.only]
			}
			step := func(s float64) api.PathState {
				res := map[string]ProbeResult{"b": {}}
				if !tt.never {
					res["b"] = ProbeResult{LastReply: at(min(s, 1)), RTT: time.Millisecond}
				}
				for i, name := range others {
					res[name] = ProbeResult{LastReply: at(s), RTT: tt.rtts[i]}
				}
				round(p, at(s), res)
				st, _ := p.State("b")
				return st
			}
			var s float64
			for s = 0; s+1 <= tt.upTo; s++ {
				if st := step(s); st != api.PathUp {
					t.Fatalf("at %vs: b is %q, want up", s, st)
				}
			}
			if st := step(tt.upTo); st != api.PathUp {
				t.Fatalf("at %vs: b is %q, want up", tt.upTo, st)
			}
			if got := p.Silence(at(tt.upTo)); got != tt.silence {
				t.Errorf("Silence = %v, want %v", got, tt.silence)
			}
			if st := step(tt.downAt); st != api.PathDown {
				t.Fatalf("at %vs: b is %q, want down", tt.downAt, st)
			}
			for _, name := range others {
				if st, _ := p.State(name); st != api.PathUp {
					t.Errorf("%s, answering every round, is %q", name, st)
				}
			}
		})
	}
}

// round is one probe round as the daemon runs it: the answers, then the
// choice of the probes that go out (all of them here, when as many peers
// as ProbeBudget or fewer are due).
func round(p *Paths, now time.Time, results map[string]ProbeResult) []string {
	p.Observe(now, results)
	return p.Due(now)
}

// observeSilent runs probe rounds a second apart from now in which the
// peers in silent never answer and those in answering answer every round,
// until a path that never answered counts as down; it returns the time of
// the last round.
func observeSilent(p *Paths, now time.Time, silent []string, answering map[string]time.Duration) time.Time {
	var last time.Time
	for i := 0; i <= int(PathFirstAnswerWithin/time.Second); i++ {
		last = now.Add(time.Duration(i) * time.Second)
		res := map[string]ProbeResult{}
		for _, name := range silent {
			res[name] = ProbeResult{}
		}
		for name, rtt := range answering {
			res[name] = ProbeResult{LastReply: last, RTT: rtt}
		}
		round(p, last, res)
	}
	return last
}

// Peers no longer probed are forgotten, so the tracker stays bounded.
func TestPathsForgetUnprobed(t *testing.T) {
	p := NewPaths()
	now := time.Now()
	round(p, now, map[string]ProbeResult{"a": {}, "b": {}})
	observeSilent(p, now.Add(time.Second), []string{"a"}, nil)
	if got := p.Down(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Down() = %v, want [a]", got)
	}
	if st, _ := p.State("b"); st != "" {
		t.Fatalf("forgotten peer has state %q", st)
	}
}

func TestRelays(t *testing.T) {
	rep := func(name string, down ...string) PathReport {
		return PathReport{Name: name, Live: true, Known: true, Down: down}
	}
	old := func(name string) PathReport { return PathReport{Name: name, Live: true} }
	noRelay := func(r PathReport) PathReport { r.NoRelay = true; return r }
	dead := func(r PathReport) PathReport { r.Live = false; return r }
	tests := []relayCase{
		{name: "all direct", self: "a",
			reports: []PathReport{rep("a"), rep("b"), rep("c")}, want: map[string]string{}},
		{name: "triangle", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), rep("c")}, want: map[string]string{"b": "c"}},
		{name: "triangle from the other end picks the same relay", self: "b",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), rep("c")}, want: map[string]string{"a": "c"}},
		{name: "one end seeing it down is enough", self: "a",
			reports: []PathReport{rep("a"), rep("b", "a"), rep("c")}, want: map[string]string{"b": "c"}},
		{name: "smallest name among relays", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), rep("d"), rep("c")}, want: map[string]string{"b": "c"}},
		{name: "relay must reach both", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), rep("c", "b"), rep("d")}, want: map[string]string{"b": "d"}},
		{name: "relay must be reached by self", self: "a",
			reports: []PathReport{rep("a", "b", "c"), rep("b", "a"), rep("c"), rep("d")}, want: map[string]string{"b": "d", "c": "d"}},
		{name: "no-relay is respected", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), noRelay(rep("c")), rep("d")}, want: map[string]string{"b": "d"}},
		{name: "no-relay everywhere stays direct", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), noRelay(rep("c"))}, want: map[string]string{}},
		{name: "dead relay is not used", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), dead(rep("c")), rep("d")}, want: map[string]string{"b": "d"}},
		{name: "previous-release node is no relay", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a"), old("c")}, want: map[string]string{}},
		{name: "previous-release node is not relayed to", self: "a",
			reports: []PathReport{rep("a", "b"), old("b"), rep("c")}, want: map[string]string{}},
		{name: "self without a report relays nothing", self: "a",
			reports: []PathReport{old("a"), rep("b", "a"), rep("c")}, want: map[string]string{}},
		{name: "no relay reaches it", self: "a",
			reports: []PathReport{rep("a", "b"), rep("b", "a", "c"), rep("c", "b")}, want: map[string]string{}},
	}
	runRelayCases(t, tests)
}

// A relayed node's ranges (and held addresses) move to the relay's peer;
// its probe address stays on its own peer, which keeps its endpoint and
// keepalive so the direct path keeps being tried. In a dual-stack mesh the
// IPv4 probe address stays and the IPv6 ranges move with the IPv4 ones; in
// an IPv6-only mesh the probe address is IPv6 and stays as a /128.
func TestDesiredRelays(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	dual := func(in *Input) {
		in.ClusterRange6 = netip.MustParsePrefix("fd32::/48")
		in.OverlayIP6 = netip.MustParseAddr("fd32::1")
		in.Ranges = append(in.Ranges, rng("fd32::/81", "a"), rng("fd32::8000:0:0/82", "b"), rng("fd32::c000:0:0/82", "c"))
	}
	v6only := func(in *Input) {
		in.ClusterRange = netip.MustParsePrefix("fd33::/48")
		in.OverlayIP = netip.MustParseAddr("fd33::1")
		in.Ranges = []RangeOwner{rng("fd33::/82", "a"), rng("fd33::4000:0:0/82", "b"), rng("fd33::8000:0:0/82", "c"), rng("fd33::c000:0:0/82", "b")}
	}
	tests := []struct {
		name   string
		family func(in *Input) // nil: IPv4-only
		via    map[string]string
		probe  string // of b
		held   []HeldAddr
		want   map[string][]netip.Prefix
	}{
		{name: "direct", probe: "10.36.0.1",
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.44.0.0/14"), "c": pfx("10.40.0.0/14")}},
		{name: "b via c", via: map[string]string{"b": "c"}, probe: "10.36.0.1",
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.1/32"), "c": pfx("10.36.0.0/14", "10.40.0.0/14", "10.44.0.0/14")}},
		{name: "held addresses move too, the probe's own host prefix stays", via: map[string]string{"b": "c"}, probe: "10.40.0.9",
			held: []HeldAddr{held("b", "10.40.0.9"), held("b", "10.40.0.10")},
			want: map[string][]netip.Prefix{"b": pfx("10.40.0.9/32"), "c": pfx("10.36.0.0/14", "10.40.0.0/14", "10.40.0.10/32", "10.44.0.0/14")}},
		{name: "probe address outside its space is not pinned", via: map[string]string{"b": "c"}, probe: "10.40.0.7",
			want: map[string][]netip.Prefix{"b": nil, "c": pfx("10.36.0.0/14", "10.40.0.0/14", "10.44.0.0/14")}},
		{name: "no probe address", via: map[string]string{"b": "c"},
			want: map[string][]netip.Prefix{"b": nil, "c": pfx("10.36.0.0/14", "10.40.0.0/14", "10.44.0.0/14")}},
		{name: "relay without a peer stays direct", via: map[string]string{"b": "x"}, probe: "10.36.0.1",
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.44.0.0/14"), "c": pfx("10.40.0.0/14")}},
		{name: "relay through self stays direct", via: map[string]string{"b": "a"}, probe: "10.36.0.1",
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.44.0.0/14"), "c": pfx("10.40.0.0/14")}},
		{name: "dual-stack: b via c, the IPv4 probe stays", family: dual, via: map[string]string{"b": "c"}, probe: "10.36.0.1",
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.1/32"), "c": pfx("10.36.0.0/14", "10.40.0.0/14", "10.44.0.0/14", "fd32::8000:0:0/82", "fd32::c000:0:0/82")}},
		{name: "IPv6-only: direct", family: v6only, probe: "fd33::4000:0:1",
			want: map[string][]netip.Prefix{"b": pfx("fd33::4000:0:0/82", "fd33::c000:0:0/82"), "c": pfx("fd33::8000:0:0/82")}},
		{name: "IPv6-only: b via c, the IPv6 probe stays", family: v6only, via: map[string]string{"b": "c"}, probe: "fd33::4000:0:1",
			want: map[string][]netip.Prefix{"b": pfx("fd33::4000:0:1/128"), "c": pfx("fd33::4000:0:0/82", "fd33::8000:0:0/82", "fd33::c000:0:0/82")}},
		{name: "IPv6-only: held addresses move too, the probe's own host prefix stays", family: v6only, via: map[string]string{"b": "c"}, probe: "fd33::8000:0:9",
			held: []HeldAddr{held("b", "fd33::8000:0:9"), held("b", "fd33::8000:0:10")},
			want: map[string][]netip.Prefix{"b": pfx("fd33::8000:0:9/128"), "c": pfx("fd33::4000:0:0/82", "fd33::8000:0:0/82", "fd33::8000:0:10/128", "fd33::c000:0:0/82")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := w.input()
			if tt.family != nil {
				tt.family(&in)
			}
			in.Via = tt.via
			in.Held = tt.held
			if tt.probe != "" {
				in.Nodes[1].Probe = netip.MustParseAddr(tt.probe)
			}
			d, err := desired(in)
			if err != nil {
				t.Fatal(err)
			}
			cfg := d.cfg
			if len(cfg.Peers) != 2 {
				t.Fatalf("%d peers, want 2", len(cfg.Peers))
			}
			// Each node's own prefixes, which the relay counter
			// attributes its packets by, are what its entry holds
			// when nothing is relayed: never the ranges it carries
			// as a relay, nor less than its own while relayed.
			direct := in
			direct.Via = nil
			dd, err := desired(direct)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range dd.cfg.Peers {
				name := map[crypto.Key]string{w.pubs["b"]: "b", w.pubs["c"]: "c"}[p.PublicKey]
				if !slices.Equal(d.own[name], p.AllowedIPs) {
					t.Errorf("%s: own prefixes %v, want %v", name, d.own[name], p.AllowedIPs)
				}
			}
			for _, p := range cfg.Peers {
				name := map[crypto.Key]string{w.pubs["b"]: "b", w.pubs["c"]: "c"}[p.PublicKey]
				if !slices.Equal(p.AllowedIPs, tt.want[name]) {
					t.Errorf("%s: AllowedIPs %v, want %v", name, p.AllowedIPs, tt.want[name])
				}
				if !p.Endpoint.IsValid() || p.Keepalive != in.Keepalive {
					t.Errorf("%s: endpoint %v keepalive %v: the direct path must keep being tried", name, p.Endpoint, p.Keepalive)
				}
			}
		})
	}
}

// The reconciler reports who is relayed through whom, with the direct
// path's state, and counts each change of the relayed routes once.
func TestReconcilerReportsRelays(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	dp := fastdptest.New("")
	r := NewReconciler(dp, nil)
	ctx := context.Background()
	dp.SetStats([]fastdp.PeerStats{{PublicKey: w.pubs["b"]}, {PublicKey: w.pubs["c"]}})
	now := time.Unix(1_000_000, 0)
	now = observeSilent(r.Paths(), now, []string{"b"}, map[string]time.Duration{"c": 1500 * time.Microsecond})
	conns := func() map[string]api.Connection {
		t.Helper()
		cs, err := r.Connections(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]api.Connection{}
		for _, c := range cs {
			out[c.Peer] = c
		}
		return out
	}
	apply := func(via map[string]string) {
		t.Helper()
		in := w.input()
		in.Nodes[1].Probe = netip.MustParseAddr("10.36.0.1")
		in.Via = via
		if _, err := r.Apply(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	apply(nil)
	if c := r.Counters().RelayChanges; c != 0 {
		t.Fatalf("relay changes %d with nothing relayed", c)
	}
	apply(map[string]string{"b": "c"})
	apply(map[string]string{"b": "c"}) // unchanged: not counted
	cs := conns()
	if b := cs["b"]; b.Via != "c" || b.DirectPath != api.PathDown || b.RTTMillis != 0 || !slices.Equal(b.AllowedIPs, []string{"10.36.0.1/32"}) {
		t.Fatalf("b = %+v, want via c, down, only its probe address", b)
	}
	if c := cs["c"]; c.Via != "" || c.DirectPath != api.PathUp || c.RTTMillis != 1.5 {
		t.Fatalf("c = %+v, want direct, up, 1.5 ms", c)
	}
	own := r.OwnPrefixes()
	if b, c := fmt.Sprint(own["b"]), fmt.Sprint(own["c"]); b != "[10.36.0.0/14 10.44.0.0/14]" || c != "[10.40.0.0/14]" || len(own) != 2 {
		t.Fatalf("own prefixes %v: want b's ranges on b alone while c carries them", own)
	}
	apply(nil)
	if c := r.Counters().RelayChanges; c != 2 {
		t.Fatalf("relay changes %d, want 2 (to the relay and back)", c)
	}
	if b := conns()["b"]; b.Via != "" {
		t.Fatalf("b still via %q after the relay was dropped", b.Via)
	}
}

// relayCase is a named case of Relays: the next hop, by peer, that self
// computes from reports.
type relayCase struct {
	name    string
	self    string
	reports []PathReport
	want    map[string]string
}

func runRelayCases(t *testing.T, tests []relayCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Relays(tt.self, tt.reports)
			if got == nil {
				got = map[string]string{}
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("Relays(%q) = %v, want %v", tt.self, got, tt.want)
			}
		})
	}
}

// pathSim runs probe rounds against peers that answer every probe at once,
// but for the silent ones.
type pathSim struct {
	p       *Paths
	peers   []string
	silent  map[string]bool
	answers map[string]time.Time // last answer by peer
	probed  map[string]time.Time // last probe by peer
}

func newPathSim(n int) *pathSim {
	s := &pathSim{p: NewPaths(), silent: map[string]bool{}, answers: map[string]time.Time{}, probed: map[string]time.Time{}}
	for i := range n {
		s.peers = append(s.peers, fmt.Sprintf("host%03d", i+1))
	}
	return s
}

// round runs one round at now and returns the peers it probed.
func (s *pathSim) round(now time.Time) []string {
	res := map[string]ProbeResult{}
	for _, name := range s.peers {
		res[name] = ProbeResult{LastReply: s.answers[name], RTT: time.Millisecond}
	}
	due := round(s.p, now, res)
	for _, name := range due {
		s.probed[name] = now
		if !s.silent[name] {
			s.answers[name] = now.Add(time.Millisecond)
		}
	}
	return due
}

// A round sends at most ProbeBudget probes to healthy paths and
// ProbeBudget to paths in question, whatever the number of peers; up to
// ProbeBudget peers each is probed every round (a ticker's jitter
// included); beyond, each healthy path is probed at least every
// probeEvery, none is starved by many paths in question, and a path that
// stops answering is down within its turn plus the PathDownProbes rounds
// in which it is in question.
func TestPathsProbeBudget(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		peers  int
		silent int // the first silent peers never answer
		tick   time.Duration
	}{
		{name: "as many peers as the budget, every round", peers: ProbeBudget, tick: ProbeInterval},
		{name: "a jittery ticker skips no round", peers: ProbeBudget, tick: ProbeInterval - 10*time.Millisecond},
		{name: "thirty peers in turn", peers: 30, tick: ProbeInterval},
		{name: "a hundred peers in turn", peers: 100, tick: ProbeInterval},
		{name: "healthy paths are not starved by many in question", peers: 40, silent: 30, tick: ProbeInterval},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newPathSim(tt.peers)
			for _, name := range s.peers[:tt.silent] {
				s.silent[name] = true
			}
			every := probeEvery(tt.peers)
			// The longest a peer may wait between two probes: a healthy
			// path its turn, a path in question its place among them.
			inQuestion := func(n int) time.Duration {
				return time.Duration((n+ProbeBudget-1)/ProbeBudget) * tt.tick
			}
			wait := max(every, inQuestion(tt.silent)) + tt.tick
			now := t0
			for i := range 200 {
				now = t0.Add(time.Duration(i) * tt.tick)
				due := s.round(now)
				if len(due) > 2*ProbeBudget {
					t.Fatalf("round %d sent %d probes, budget %d and %d", i, len(due), ProbeBudget, ProbeBudget)
				}
				if tt.peers <= ProbeBudget && len(due) != tt.peers {
					t.Fatalf("round %d probed %v, want all %d peers", i, due, tt.peers)
				}
				if i < 20 {
					continue // the first probes go out in turn
				}
				for _, name := range s.peers {
					if gap := now.Sub(s.probed[name]); gap > wait {
						t.Fatalf("round %d: %s last probed %v ago, want at most %v", i, name, gap, wait)
					}
				}
			}
			if got := len(s.p.Down()); got != tt.silent {
				t.Fatalf("%d paths down, want the %d silent ones: %v", got, tt.silent, s.p.Down())
			}

			// One healthy peer stops answering: down within its turn
			// and the PathDownProbes probes that follow, each as soon
			// as its place among the paths in question comes (a round
			// more for the one in which the last probe goes out).
			victim := s.peers[len(s.peers)-1]
			s.silent[victim] = true
			stopped := now
			bound := every + time.Duration(PathDownProbes)*inQuestion(tt.silent+1) + tt.tick
			for i := 1; ; i++ {
				now = stopped.Add(time.Duration(i) * tt.tick)
				s.round(now)
				if st, _ := s.p.State(victim); st == api.PathDown {
					break
				}
				if now.Sub(stopped) > bound {
					t.Fatalf("%s still up %v after its last answer, bound %v", victim, now.Sub(stopped), bound)
				}
			}
			t.Logf("%d peers: %s down %v after it stopped answering", tt.peers, victim, now.Sub(stopped))
		})
	}
}

// TestCoordRepublishInterval: 30 s up to 30 members, then a second per
// member, so that a mesh's coordinate republications stay about one a
// second (each is a metadata change every member gossips on).
func TestCoordRepublishInterval(t *testing.T) {
	for _, tc := range []struct {
		members int
		want    time.Duration
	}{
		{0, CoordRepublishEvery},
		{3, CoordRepublishEvery},
		{30, CoordRepublishEvery},
		{31, 31 * time.Second},
		{100, 100 * time.Second},
		{1000, 1000 * time.Second},
	} {
		if got := CoordRepublishInterval(tc.members); got != tc.want {
			t.Errorf("CoordRepublishInterval(%d) = %v, want %v", tc.members, got, tc.want)
		}
		if rate := float64(tc.members) / CoordRepublishInterval(tc.members).Seconds(); rate > 1.0001 {
			t.Errorf("%d members republish %.2f coordinates a second, more than one", tc.members, rate)
		}
	}
}
