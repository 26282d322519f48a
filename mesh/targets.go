package mesh

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/meshnet/mesh/internal/atomicfile"
)

// neighbourExchangeEvery bounds the extra state exchanges for members with
// neither a direct path nor a relay (relayTransport.neighbourExchange):
// one at a time, at most one per interval, only while such a member
// exists. memberlist's own exchange runs every 15 s with a member picked
// at random.
const neighbourExchangeEvery = 3 * time.Second

// Target states, as shown in status.
const (
	TargetConnected = "connected"
	TargetRetrying  = "retrying"
	// TargetFailed means the peer answered but refused us, typically for a
	// wrong password: retrying goes on, but it will not heal by itself.
	TargetFailed = "failed"
)

// Where a target came from.
const (
	SourceLaunch  = "launch"
	SourceConnect = "connect"
	SourceLearned = "learned"
)

// TargetStatus is one peer address this node tries to join.
type TargetStatus struct {
	Address   string
	Source    string
	State     string
	Error     string
	NextRetry time.Time
}

type target struct {
	addr     string
	source   string
	state    string
	err      error
	failures int
	next     time.Time
	busy     bool
}

// targets keeps the peers to join and retries them with backoff.
type targets struct {
	m    *Membership
	cfg  Config
	wake chan struct{}

	mu         sync.Mutex
	list       map[string]*target
	remembered map[string]bool
}

func newTargets(m *Membership, cfg Config) *targets {
	t := &targets{m: m, cfg: cfg, wake: make(chan struct{}, 1), list: map[string]*target{}, remembered: map[string]bool{}}
	for _, a := range cfg.Targets {
		t.list[a] = &target{addr: a, source: SourceLaunch, state: TargetRetrying}
	}
	t.loadRemembered()
	return t
}

// Connect adds a target at run time; addr must already be host:port.
func (m *Membership) Connect(addr string) {
	t := m.targets
	t.mu.Lock()
	if old, ok := t.list[addr]; ok {
		old.source = SourceConnect
		old.next = time.Time{}
	} else {
		t.list[addr] = &target{addr: addr, source: SourceConnect, state: TargetRetrying}
	}
	t.mu.Unlock()
	t.poke()
}

// Forget stops trying addr and drops it from the remembered peers. It
// reports whether addr was known at all.
func (m *Membership) Forget(addr string) bool {
	t := m.targets
	t.mu.Lock()
	_, known := t.list[addr]
	delete(t.list, addr)
	if t.remembered[addr] {
		known = true
		delete(t.remembered, addr)
		t.saveRememberedLocked()
	}
	t.mu.Unlock()
	return known
}

// Targets returns the targets sorted by address.
func (m *Membership) Targets() []TargetStatus {
	t := m.targets
	alone := m.aliveOthers() == 0
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []TargetStatus
	for _, tg := range t.list {
		if tg.source == SourceLearned && !alone {
			continue
		}
		st := TargetStatus{Address: tg.addr, Source: tg.source, State: tg.state}
		if tg.err != nil {
			st.Error = tg.err.Error()
		}
		if tg.state != TargetConnected {
			st.NextRetry = tg.next
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

func (t *targets) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *targets) loop(done <-chan struct{}) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var exchanging atomic.Bool
	var lastExchange time.Time
	for {
		t.refresh()
		for _, tg := range t.due() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t.attempt(ctx, tg)
			}()
		}
		if now := time.Now(); now.Sub(lastExchange) >= neighbourExchangeEvery && !exchanging.Load() {
			if addr, ok := t.m.relay.neighbourExchange(now); ok {
				lastExchange = now
				exchanging.Store(true)
				t.m.relay.exchanges.Add(1)
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer exchanging.Store(false)
					// A join to a known member is memberlist's full state
					// exchange with it, nothing more.
					if _, err := t.m.list.Join([]string{addr}); err != nil {
						t.m.log.Debug("state exchange for members with no route failed", "peer", addr, "error", err)
					}
				}()
			}
		}
		select {
		case <-done:
			return
		case <-tick.C:
		case <-t.wake:
		}
	}
}

// refresh marks targets connected or not from the live membership, so a
// target whose node died is retried again.
func (t *targets) refresh() {
	t.refreshFrom(t.m.liveAddrs())
}

// refreshFrom is refresh with the live members' addresses given.
func (t *targets) refreshFrom(liveAddrs []netip.AddrPort) {
	live := map[netip.AddrPort]bool{}
	for _, a := range liveAddrs {
		live[a] = true
	}
	t.mu.Lock()
	// Remembered peers are retried too, so that both sides of a healed
	// partition find each other again even when no named peer is on the
	// other side, and a restarted node can rejoin through any of them.
	// They become targets before the check below: a peer just learned
	// from gossip is live, and a target added after the check used to be
	// joined at once, a full push/pull to every member a node learns of
	// (N-1 of them at each newcomer).
	for a := range t.remembered {
		if _, ok := t.list[a]; !ok {
			t.list[a] = &target{addr: a, source: SourceLearned, state: TargetRetrying}
		}
	}
	addrs := make([]string, 0, len(t.list))
	for a := range t.list {
		addrs = append(addrs, a)
	}
	t.mu.Unlock()
	// Matching may resolve host names: do it without the lock, which
	// memberlist's event callbacks (learned) and the API also take.
	connected := make(map[string]bool, len(addrs))
	for _, a := range addrs {
		connected[a] = matchesAny(a, live)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.markLocked(connected, time.Now())
}

// markLocked records which targets are connected (connected, by address)
// at now: a connected target is reset; one that was connected and no
// longer is gets its first retry at a random point of RejoinSpread after
// RetryMin. Such a member is most often alive and slow (a false death
// under load): it hears of its death through gossip and refutes it within
// seconds, with no join needed. Every other node redialling it at once,
// each a full push/pull, kept loaded nodes from answering their probes
// and turned false deaths into a collapse of 50 simulated hosts on two
// cores (docs/scale.md, "Where the CPU of simulated hosts goes"). A real
// partition is healed by the retries after the first, as before. Called
// with t.mu held.
func (t *targets) markLocked(connected map[string]bool, now time.Time) {
	for a, tg := range t.list {
		if tg.busy {
			continue
		}
		if connected[a] {
			if tg.state != TargetConnected {
				tg.state, tg.err, tg.failures = TargetConnected, nil, 0
			}
		} else if tg.state == TargetConnected {
			tg.state = TargetRetrying
			tg.next = now.Add(t.cfg.RetryMin)
			if t.cfg.RejoinSpread > 0 {
				tg.next = tg.next.Add(time.Duration(rand.Int64N(int64(t.cfg.RejoinSpread))))
			}
		}
	}
}

// learnedRank orders targets named by an operator before learned ones.
func learnedRank(tg *target) int {
	if tg.source == SourceLearned {
		return 1
	}
	return 0
}

// maxJoinsInFlight bounds the join attempts a node runs at once. Each is a
// full push/pull of the member list, and after a partition or a wave of
// false deaths every remembered dead peer is due at the same moment: up to
// maxRemembered push/pulls at once per node, which turned false suspicions
// into a collapse at 160 members (docs/scale.md, "Membership on
// loopback"). One attempt that gets through heals the view; the others
// wait their turn.
const maxJoinsInFlight = 4

// due marks busy, and returns, the targets to attempt now: at most
// maxJoinsInFlight in flight, peers named at launch or by connect before
// learned ones, then the longest due first.
func (t *targets) due() []*target {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var ready []*target
	busy := 0
	for _, tg := range t.list {
		if tg.busy {
			busy++
			continue
		}
		if tg.state == TargetConnected || now.Before(tg.next) {
			continue
		}
		ready = append(ready, tg)
	}
	slices.SortFunc(ready, func(a, b *target) int {
		if c := cmp.Compare(learnedRank(a), learnedRank(b)); c != 0 {
			return c
		}
		if c := a.next.Compare(b.next); c != 0 {
			return c
		}
		return cmp.Compare(a.addr, b.addr)
	})
	out := ready[:min(len(ready), max(0, maxJoinsInFlight-busy))]
	for _, tg := range out {
		tg.busy = true
	}
	return out
}

func (t *targets) attempt(ctx context.Context, tg *target) {
	_, err := t.m.list.Join([]string{tg.addr})
	t.mu.Lock()
	defer t.mu.Unlock()
	tg.busy = false
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		if tg.state != TargetConnected {
			t.m.log.Info("joined peer", "peer", tg.addr)
		}
		tg.state, tg.err, tg.failures = TargetConnected, nil, 0
		return
	}
	err = classifyJoinError(tg.addr, err)
	tg.state = TargetRetrying
	if errors.Is(err, ErrWrongPassword) {
		tg.state = TargetFailed
	}
	changed := tg.err == nil || tg.err.Error() != err.Error()
	tg.err = err
	tg.failures++
	tg.next = time.Now().Add(t.backoff(tg.failures))
	level := t.m.log.Debug
	if changed {
		level = t.m.log.Warn
	}
	level("cannot join peer", "peer", tg.addr, "error", err, "next_retry", tg.next.Format(time.RFC3339))
}

func (t *targets) backoff(failures int) time.Duration {
	d := t.cfg.RetryMin
	for i := 1; i < failures && d < t.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, t.cfg.RetryMax)
	// Jitter keeps restarted nodes from retrying in lockstep.
	return d - d/5 + time.Duration(rand.Int64N(int64(d/5)*2+1))
}

// ErrWrongPassword marks a join refused because the two sides' gossip keys
// (or labels) differ.
var ErrWrongPassword = errors.New("wrong mesh password?")

// classifyJoinError turns memberlist's decryption failures into the
// message an operator can act on.
func classifyJoinError(addr string, err error) error {
	var me *multierror.Error
	if errors.As(err, &me) && len(me.Errors) > 0 {
		err = me.Errors[0]
	}
	s := strings.TrimPrefix(err.Error(), "failed to join "+addr+": ")
	for _, hint := range []string{"decrypt", "encrypt", "No installed keys", "label"} {
		if strings.Contains(s, hint) {
			return fmt.Errorf("cannot join %s: %w (%s)", addr, ErrWrongPassword, s)
		}
	}
	return fmt.Errorf("cannot join %s: %s", addr, s)
}

// learned remembers the address of a node seen through gossip.
func (t *targets) learned(a netip.AddrPort) {
	if !a.IsValid() {
		return
	}
	s := a.String()
	live := map[netip.AddrPort]bool{}
	for _, l := range t.m.liveAddrs() {
		live[l] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.remembered[s] || !t.evictRememberedLocked(live) {
		return
	}
	t.remembered[s] = true
	t.saveRememberedLocked()
}

func (t *targets) loadRemembered() {
	if t.cfg.RememberedFile == "" {
		return
	}
	b, err := os.ReadFile(t.cfg.RememberedFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			t.m.log.Warn("cannot read remembered peers", "file", t.cfg.RememberedFile, "error", err)
		}
		return
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		// Only hints are lost: say so and carry on with the named peers.
		t.m.log.Warn("ignoring corrupt remembered peers file", "file", t.cfg.RememberedFile, "error", err)
		return
	}
	for _, a := range list {
		if _, err := netip.ParseAddrPort(a); err == nil && len(t.remembered) < maxRemembered {
			t.remembered[a] = true
		}
	}
}

func (t *targets) saveRememberedLocked() {
	if t.cfg.RememberedFile == "" {
		return
	}
	list := make([]string, 0, len(t.remembered))
	for a := range t.remembered {
		list = append(list, a)
	}
	sort.Strings(list)
	b, _ := json.Marshal(list)
	if err := atomicfile.Write(t.cfg.RememberedFile, b, 0o600); err != nil {
		t.m.log.Warn("cannot save remembered peers", "error", err)
	}
}

// matchesAny reports whether target addr (host:port) names one of live,
// resolving host names. A lookup per address, not a scan of live: refresh
// runs every 500 ms over up to maxRemembered targets, and a scan that
// formatted every live member's port for each target cost targets x members
// (256 x 500 formattings per pass with 500 members; docs/scale.md,
// "Membership on loopback").
func matchesAny(addr string, live map[netip.AddrPort]bool) bool {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return false
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = append(ips, ip.Unmap())
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if found, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host); err == nil {
			for _, ip := range found {
				ips = append(ips, ip.Unmap())
			}
		}
	}
	for _, ip := range ips {
		if live[netip.AddrPortFrom(ip, uint16(port))] {
			return true
		}
	}
	return false
}

// liveAddrs returns the addresses of alive and suspect members but self.
func (m *Membership) liveAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, mem := range m.Members() {
		if !mem.Self && (mem.State.Live()) {
			out = append(out, mem.Addr)
		}
	}
	return out
}

func (m *Membership) aliveOthers() int { return len(m.liveAddrs()) }
