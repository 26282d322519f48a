package mesh

import (
	"crypto/ed25519"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// Flags of TestScaleMembershipLoopback.
var (
	scaleSizes     = flag.String("mesh.scale.sizes", "", "comma-separated member counts for TestScaleMembershipLoopback (default 20, convergence only; MESH_SOAK=1: 50; either of these flags or MESH_SOAK=1 measures everything)")
	scaleSignedMax = flag.Int("mesh.scale.signedmax", 100, "largest size at which TestScaleMembershipLoopback signs the members' metadata (each alive message a member merges costs an ed25519 verification: docs/scale.md)")
	scaleRest      = flag.Duration("mesh.scale.rest", 0, "how long TestScaleMembershipLoopback counts bytes at rest (default: one push/pull interval at that size, which every member's periodic push/pull falls into once)")
)

// The daemon's own settings where the test must repeat them: the leave
// timeout of daemon/leave.go (not importable from here).
const scaleLeaveTimeout = 3 * time.Second

// Bounds that a loaded 2-core machine cannot miss by chance; the figures
// themselves are logged. One place for all of them.
func scaleBounds(n int) (join, leave, dead, heal time.Duration) {
	join = 2*time.Minute + time.Duration(n)*200*time.Millisecond
	leave = time.Minute
	_, maxSuspicion := scaleSuspicion(n)
	dead = 2*maxSuspicion + time.Minute
	heal = 5 * time.Minute
	return
}

// scaleSuspicion is memberlist's suspicion timeout for n members with the
// LAN settings mesh uses (membership.go keeps memberlist's defaults
// here): SuspicionMult x max(1, log10 n) x ProbeInterval, shrinking from
// SuspicionMaxTimeoutMult times that towards it as other members confirm.
func scaleSuspicion(n int) (minimum, maximum time.Duration) {
	const suspicionMult, maxMult, probeInterval = 4, 6, time.Second
	minimum = time.Duration(float64(suspicionMult) * math.Max(1, math.Log10(float64(n))) * float64(probeInterval))
	return minimum, maxMult * minimum
}

// scalePushPull is memberlist's push/pull interval for n members:
// mesh's 15 s (membership.go) stretched past 32 members.
func scalePushPull(n int) time.Duration {
	if n <= 32 {
		return 15 * time.Second
	}
	return time.Duration(math.Ceil(math.Log2(float64(n))-5)+1) * 15 * time.Second
}

// scaleNet is the test's view of the loopback network: which member has
// which gossip address, which links are cut, and what was sent.
type scaleNet struct {
	mu     sync.RWMutex
	index  map[string]int // gossip address -> member index
	cut    atomic.Bool
	sideOf func(i int) int // while cut: members of different sides do not talk

	packets, packetBytes, streams, streamBytes atomic.Int64
}

// scaleTap is one member's gossipTap.
type scaleTap struct {
	net *scaleNet
	i   int
}

func (s *scaleTap) allowed(addr string) bool {
	if !s.net.cut.Load() {
		return true
	}
	s.net.mu.RLock()
	j, ok := s.net.index[addr]
	s.net.mu.RUnlock()
	return !ok || s.net.sideOf(s.i) == s.net.sideOf(j)
}

func (s *scaleTap) packet(addr string, n int) bool {
	if !s.allowed(addr) {
		return false
	}
	s.net.packets.Add(1)
	s.net.packetBytes.Add(int64(n))
	return true
}

func (s *scaleTap) dial(addr string) bool { return s.allowed(addr) }

func (s *scaleTap) conn(c net.Conn) net.Conn {
	s.net.streams.Add(1)
	return &countedConn{Conn: c, n: &s.net.streamBytes}
}

// countedConn counts a dialled stream's bytes both ways: every stream has
// one dialler among the members, so each byte is counted once.
type countedConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

type scaleResult struct {
	n                          int
	start, join                time.Duration
	leave, leaveCall, dead     time.Duration
	split, heal                time.Duration
	joinAlive, healAlive       time.Duration // -1: not within scaleAliveWait; 0: not measured
	load                       float64       // the machine's highest 1-minute load average seen
	restBytes, restPackets     float64       // per member per second
	restStreams                float64       // stream bytes per member per second
	cpuRest                    float64       // share of one core per member at rest
	rssMiB                     float64
	goroutines                 int
	minSuspicion, maxSuspicion time.Duration
}

// TestScaleMembershipLoopback runs N real Memberships (memberlist, the
// relay transport, encryption, signed metadata) in this process on
// loopback and measures what docs/scale.md, "Membership on loopback (real
// memberlist)", reports: convergence after the joins, a graceful leave, a
// crash, and a partition's heal, and memberlist's bytes at rest. The IPAM
// figures of the same section come from the simulation in ipam/, not from
// here. Each size's members are closed before the next size starts.
func TestScaleMembershipLoopback(t *testing.T) {
	// The default (make test) is the convergence after each event, which
	// takes about 30 s at 20 members; the bytes at rest need one push/pull
	// interval (15 s and more), and the statuses' lag minutes.
	sizes, full := []int{20}, false
	if os.Getenv("MESH_SOAK") != "" {
		// 200 and 500 did not settle in one process on a 2-core machine
		// (docs/scale.md): they are findings, run by naming them.
		sizes, full = []int{50}, true
	}
	if *scaleSizes != "" || *scaleRest > 0 {
		full = true
	}
	if *scaleSizes != "" {
		sizes = nil
		for _, f := range strings.Split(*scaleSizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 6 {
				t.Fatalf("-mesh.scale.sizes: bad size %q (at least 6)", f)
			}
			sizes = append(sizes, n)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%5s %8s %8s %10s %8s %8s %8s %8s %10s %8s %10s %10s %8s %8s %8s %6s %5s\n",
		"N", "starts", "join", "join alive", "leave", "dead", "split", "heal", "heal alive", "B/s/mem", "pkts/s/mem", "tcp B/s/m", "cpu/mem", "RSS MiB", "gorout", "pp", "load")
	for _, n := range sizes {
		r := measureMembershipScale(t, n, full)
		round := func(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
		alive := func(d time.Duration) string {
			if d == 0 {
				return "-"
			}
			if d < 0 {
				return ">" + round(scaleAliveWait)
			}
			return round(d)
		}
		fmt.Fprintf(&b, "%5d %8s %8s %10s %8s %8s %8s %8s %10s %8.0f %10.1f %10.0f %7.2f%% %8.0f %8d %6s %5.1f\n",
			r.n, round(r.start), round(r.join), alive(r.joinAlive), round(r.leave), round(r.dead), round(r.split), round(r.heal), alive(r.healAlive),
			r.restBytes, r.restPackets, r.restStreams, 100*r.cpuRest, r.rssMiB, r.goroutines, scalePushPull(n), r.load)
		t.Logf("N=%d: suspicion timeout %s to %s (SuspicionMult 4, SuspicionMaxTimeoutMult 6, ProbeInterval 1s, ProbeTimeout 500ms), push/pull every %s, GossipToTheDeadTime 30s, join retry %s to %s; Leave took %s",
			n, r.minSuspicion.Round(100*time.Millisecond), r.maxSuspicion.Round(100*time.Millisecond), scalePushPull(n),
			DefaultConfig().RetryMin, DefaultConfig().RetryMax, r.leaveCall.Round(10*time.Millisecond))
	}
	t.Log(b.String())
}

// raiseFileLimit makes room for n members' listeners and streams, and
// restores the limit when the test ends.
func raiseFileLimit(t *testing.T, n int) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	// Two listeners per member, a few streams in flight each, the test's own.
	want := uint64(8*n + 256)
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		t.Fatalf("open files limit %d (hard) is below the %d that %d members need", lim.Max, want, n)
	}
	old := lim
	lim.Cur = want
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("setrlimit to %d open files: %v", want, err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

func measureMembershipScale(t *testing.T, n int, full bool) scaleResult {
	raiseFileLimit(t, n)
	joinBound, leaveBound, deadBound, healBound := scaleBounds(n)
	r := scaleResult{n: n}
	r.minSuspicion, r.maxSuspicion = scaleSuspicion(n)
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	sn := &scaleNet{index: map[string]int{}}
	ms := make([]*Membership, n)
	names := make([]string, n)
	// Everything the members hold goes when this size is done, not at the
	// end of the test: the next size needs the CPU and the ports.
	defer func() {
		var wg sync.WaitGroup
		for _, m := range ms {
			if m != nil {
				wg.Add(1)
				go func() { defer wg.Done(); m.Close() }()
			}
		}
		wg.Wait()
	}()

	startMember := func(i int) {
		names[i] = fmt.Sprintf("m%04d", i)
		_, signing, err := ed25519.GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.Name = names[i]
		// What a daemon publishes, so push/pulls carry realistic metadata.
		cfg.Meta = Meta{PeerID: fmt.Sprintf("%032x", i), Version: "v1.0.0", PublicKey: strings.Repeat("A", 43) + "=",
			DPPort: 6784, Keys: []string{"0123456789abcdef"}, IPAMInfos: IPAMInfosSigned}
		if n <= *scaleSignedMax {
			cfg.SigningKey = signing
		}
		cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
		cfg.AdvertiseAddr = cfg.BindAddr
		cfg.Port = 0
		cfg.GossipKey = key
		// Each joins through member (i-1)/2: a binary tree, so no member
		// answers more than two joins (with every member naming one, that
		// one would answer n push/pulls of a growing state, which the e2e
		// test already measures) and every member named is an earlier one.
		if i > 0 {
			cfg.Targets = []string{ms[(i-1)/2].LocalAddr().String()}
		}
		cfg.Logger = slog.New(slog.DiscardHandler)
		cfg.tap = &scaleTap{net: sn, i: i}
		m, err := New(cfg)
		if err != nil {
			t.Fatalf("member %d of %d: %v", i, n, err)
		}
		ms[i] = m
		sn.mu.Lock()
		sn.index[m.LocalAddr().String()] = i
		sn.mu.Unlock()
		m.Start()
	}
	upTo := func(k int) []int {
		idx := make([]int, k)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	// The first n-1 start in batches, each batch once the members before
	// it see each other: a mesh grows so, and all n at once in one process
	// set off a storm of false suspicions on two cores (docs/scale.md).
	// The join measured is then the last member's, into a settled mesh.
	begin := time.Now()
	batch := max(10, n/10)
	for i := range n - 1 {
		startMember(i)
		if (i+1)%batch == 0 || i == n-2 {
			d := waitScale(t, fmt.Sprintf("the first %d members to see each other", i+1), joinBound, seeAll(ms, names, upTo(i+1), upTo(i+1), live), time.Now())
			t.Logf("N=%d: %d members started, all saw each other %s after the batch's last start (load %.1f)", n, i+1, d.Round(10*time.Millisecond), loadAverage())
		}
	}
	r.start = time.Since(begin)
	lastStart := time.Now()
	startMember(n - 1)

	everyone := upTo(n)
	r.join = waitScale(t, "every member to see all live", joinBound, seeAll(ms, names, everyone, everyone, live), lastStart)
	r.load = loadAverage()
	if full {
		r.joinAlive = waitAlive(t, "every member's status to say all alive", seeAll(ms, names, everyone, everyone, exactly(api.MemberAlive)), lastStart)
	}
	t.Logf("N=%d (metadata signed: %t): %d members started and settled in %s; after the last one's start every member saw all %d live in %s, all alive in its status after %s",
		n, n <= *scaleSignedMax, n-1, r.start.Round(time.Millisecond), n, r.join.Round(time.Millisecond), fmtAlive(r.joinAlive))

	if full {
		measureRest(t, &r, sn)
	}

	// A graceful leave: every other member sees it left.
	leaver, crashed := n-1, n-2
	others := make([]int, 0, n)
	for i := range n {
		if i != leaver && i != crashed {
			others = append(others, i)
		}
	}
	t0 := time.Now()
	if err := ms[leaver].Leave(scaleLeaveTimeout); err != nil {
		t.Fatalf("member %s: %v", names[leaver], err)
	}
	r.leaveCall = time.Since(t0)
	ms[leaver].Close()
	r.leave = waitScale(t, "every member to see "+names[leaver]+" left", leaveBound,
		seeAll(ms, names, append([]int{crashed}, others...), []int{leaver}, exactly(api.MemberLeft)), t0)
	t.Logf("N=%d: %s left (Leave took %s); every other member saw it left %s after Leave began", n, names[leaver], r.leaveCall.Round(time.Millisecond), r.leave.Round(time.Millisecond))

	// A crash: no goodbye, memberlist's probes and suspicion decide.
	t0 = time.Now()
	ms[crashed].Close()
	r.dead = waitScale(t, "every member to see "+names[crashed]+" dead", deadBound,
		seeAll(ms, names, others, []int{crashed}, exactly(api.MemberDead)), t0)
	t.Logf("N=%d: %s closed; every other member saw it dead after %s (suspicion timeout %s to %s)", n, names[crashed], r.dead.Round(time.Millisecond), r.minSuspicion, r.maxSuspicion)

	// A partition into two halves by index, then the heal.
	half := n / 2
	sn.sideOf = func(i int) int {
		if i < half {
			return 0
		}
		return 1
	}
	var low, high []int
	for _, i := range others {
		if i < half {
			low = append(low, i)
		} else {
			high = append(high, i)
		}
	}
	t0 = time.Now()
	sn.cut.Store(true)
	lowSees, highSees := seeAll(ms, names, low, high, exactly(api.MemberDead)), seeAll(ms, names, high, low, exactly(api.MemberDead))
	r.split = waitScale(t, "each half to see the other dead", deadBound, func() (bool, string) {
		if ok, why := lowSees(); !ok {
			return false, why
		}
		return highSees()
	}, t0)
	t.Logf("N=%d: cut into %d and %d members; each saw the other half dead after %s", n, len(low), len(high), r.split.Round(time.Millisecond))
	t0 = time.Now()
	sn.cut.Store(false)
	r.heal = waitScale(t, "every member to see all live again", healBound, seeAll(ms, names, others, others, live), t0)
	r.load = max(r.load, loadAverage())
	if full {
		r.healAlive = waitAlive(t, "every member's status to say all alive again", seeAll(ms, names, others, others, exactly(api.MemberAlive)), t0)
	}
	t.Logf("N=%d: healed; every member saw all %d live again after %s, all alive in its status after %s", n, len(others), r.heal.Round(time.Millisecond), fmtAlive(r.healAlive))
	return r
}

// state is what seeAll waits for: a member state, or any of several.
type state struct {
	name string
	is   func(api.MemberState) bool
}

func exactly(st api.MemberState) state {
	return state{string(st), func(s api.MemberState) bool { return s == st }}
}

// live is memberlist's own view of a member it has not declared dead:
// alive, or suspect in this node's status (which memberlist may have
// cleared already; docs/scale.md says why the status lags).
var live = state{"live (alive or suspect)", api.MemberState.Live}

// measureRest counts what the members send at rest over one push/pull
// interval (or -mesh.scale.rest), after the joins' broadcasts drained.
func measureRest(t *testing.T, r *scaleResult, sn *scaleNet) {
	n := r.n
	rest := scalePushPull(n)
	if *scaleRest > 0 {
		rest = *scaleRest
	}
	// The joins' alive messages are retransmitted a few times each
	// (memberlist's RetransmitMult x log10 N); 10 s is well past that.
	time.Sleep(10 * time.Second)
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	p0, pb0, sb0 := sn.packets.Load(), sn.packetBytes.Load(), sn.streamBytes.Load()
	t0 := time.Now()
	time.Sleep(rest)
	el := time.Since(t0).Seconds()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	p1, pb1, sb1 := sn.packets.Load(), sn.packetBytes.Load(), sn.streamBytes.Load()
	per := float64(n) * el
	r.restPackets = float64(p1-p0) / per
	r.restStreams = float64(sb1-sb0) / per
	r.restBytes = float64(pb1-pb0+sb1-sb0) / per
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()).Seconds()
	r.cpuRest = cpu / per
	r.rssMiB = float64(rssBytes(t)) / (1 << 20)
	r.goroutines = runtime.NumGoroutine()
	r.load = max(r.load, loadAverage())
	t.Logf("N=%d at rest over %.0f s: %.0f B/s sent per member (%.1f packets/s, %.0f B/s of it on TCP), %.2f%% of a core per member, RSS %.0f MiB, %d goroutines",
		n, el, r.restBytes, r.restPackets, r.restStreams, 100*r.cpuRest, r.rssMiB, r.goroutines)

}

// seeAll returns a check that every member in who sees every member in
// whom in state st, and, when not, says which member misses how many.
func seeAll(ms []*Membership, names []string, who, whom []int, st state) func() (bool, string) {
	return func() (bool, string) {
		missing := 0
		example := ""
		for _, i := range who {
			seen := 0
			var not []string // a few of those it does not see so, as it sees them
			for _, j := range whom {
				mem, ok := ms[i].Member(names[j])
				if ok && st.is(mem.State) {
					seen++
				} else if len(not) < 3 {
					if !ok {
						mem.State = "unknown"
					}
					not = append(not, names[j]+" "+string(mem.State))
				}
			}
			if seen < len(whom) {
				if missing == 0 {
					example = fmt.Sprintf("%s sees %d of %d %s; not: %s", names[i], seen, len(whom), st.name, strings.Join(not, ", "))
				}
				missing++
			}
		}
		if missing > 0 {
			return false, fmt.Sprintf("%d members not there yet (%s)", missing, example)
		}
		return true, ""
	}
}

// waitScale polls cond until it holds and returns the time since from;
// it fails the test after bound, logging what is missing every 10 s.
func waitScale(t *testing.T, what string, bound time.Duration, cond func() (bool, string), from time.Time) time.Duration {
	t.Helper()
	d, why, ok := pollScale(t, what, bound, cond, from)
	if !ok {
		t.Fatalf("no %s within %s: %s", what, bound, why)
	}
	return d
}

// scaleAliveWait bounds the wait for every status to say alive after
// memberlist's view converged: a member this node suspected stays suspect
// in its status until this node's own probe of it succeeds, and probes go
// round the members one a second (docs/scale.md), so the wait may exceed
// what the test can spend; it is then reported, not failed.
const scaleAliveWait = 3 * time.Minute

// waitAlive is waitScale for the statuses: -1 when not within
// scaleAliveWait.
func waitAlive(t *testing.T, what string, cond func() (bool, string), from time.Time) time.Duration {
	t.Helper()
	d, why, ok := pollScale(t, what, time.Since(from)+scaleAliveWait, cond, from)
	if !ok {
		t.Logf("no %s within %s more: %s", what, scaleAliveWait, why)
		return -1
	}
	return d
}

func fmtAlive(d time.Duration) string {
	if d == 0 {
		return "(not measured)"
	}
	if d < 0 {
		return "more than " + scaleAliveWait.String() + " more"
	}
	return d.Round(10 * time.Millisecond).String()
}

// pollScale polls cond until it holds, or until bound after from.
func pollScale(t *testing.T, what string, bound time.Duration, cond func() (bool, string), from time.Time) (time.Duration, string, bool) {
	t.Helper()
	deadline := from.Add(bound)
	lastLog := time.Now()
	for {
		ok, why := cond()
		if ok {
			return time.Since(from), "", true
		}
		if time.Now().After(deadline) {
			return 0, why, false
		}
		if time.Since(lastLog) >= 10*time.Second {
			t.Logf("waiting %s for %s: %s", time.Since(from).Round(time.Second), what, why)
			lastLog = time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loadAverage is the machine's 1-minute load average (0 if unreadable):
// the members share the machine's cores with whatever else runs, and
// their probes time out when they get too little of them.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

// rssBytes reads this process's resident set from /proc.
func rssBytes(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("reading the resident set: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("reading the resident set from %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
