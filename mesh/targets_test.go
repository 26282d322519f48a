package mesh

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// The join loop's check of which targets are connected: a lookup of the
// target's address among the live members', host names resolved.
func TestMatchesAny(t *testing.T) {
	live := map[netip.AddrPort]bool{
		netip.MustParseAddrPort("127.0.0.1:6783"): true,
		netip.MustParseAddrPort("[fd00::1]:7000"): true,
	}
	for _, tc := range []struct {
		name, addr string
		want       bool
	}{
		{"live IPv4", "127.0.0.1:6783", true},
		{"live IPv6", "[fd00::1]:7000", true},
		{"IPv4-mapped IPv6 of a live member", "[::ffff:127.0.0.1]:6783", true},
		{"host name of a live member", "localhost:6783", true},
		{"other port", "127.0.0.1:6784", false},
		{"other address", "127.0.0.2:6783", false},
		{"no port", "127.0.0.1", false},
		{"port out of range", "127.0.0.1:70000", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := matchesAny(tc.addr, live); got != tc.want {
				t.Fatalf("matchesAny(%q) = %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
}

// At most maxJoinsInFlight join attempts run at once, named targets before
// learned ones, so a wave of dead remembered peers cannot start a storm of
// push/pulls, nor keep the peers named at launch waiting.
func TestJoinAttemptsBounded(t *testing.T) {
	tg := &targets{list: map[string]*target{}}
	past := time.Now().Add(-time.Minute)
	for i := range 20 {
		a := fmt.Sprintf("192.0.2.%d:6783", i+1)
		tg.list[a] = &target{addr: a, source: SourceLearned, state: TargetRetrying, next: past.Add(time.Duration(i) * time.Second)}
	}
	named := "198.51.100.1:6783"
	tg.list[named] = &target{addr: named, source: SourceLaunch, state: TargetRetrying, next: time.Now()}
	tg.list["198.51.100.2:6783"] = &target{addr: "198.51.100.2:6783", source: SourceLaunch, state: TargetConnected}

	first := tg.due()
	if len(first) != maxJoinsInFlight {
		t.Fatalf("%d attempts due at once, want %d", len(first), maxJoinsInFlight)
	}
	if first[0].addr != named {
		t.Fatalf("first attempt is %s, want the target named at launch %s", first[0].addr, named)
	}
	for i, want := range []string{"192.0.2.1:6783", "192.0.2.2:6783", "192.0.2.3:6783"} {
		if first[i+1].addr != want {
			t.Fatalf("attempt %d is %s, want the longest due %s", i+1, first[i+1].addr, want)
		}
	}
	if more := tg.due(); len(more) != 0 {
		t.Fatalf("%d more attempts started while %d are in flight", len(more), maxJoinsInFlight)
	}
	// One finishes: one more starts.
	tg.mu.Lock()
	first[1].busy, first[1].next = false, time.Now().Add(time.Hour)
	tg.mu.Unlock()
	if more := tg.due(); len(more) != 1 || more[0].addr != "192.0.2.4:6783" {
		t.Fatalf("after one attempt ended, due = %v, want the next learned target alone", more)
	}
}

// A target whose member was connected and is no longer is retried no
// sooner than RetryMin, at a random point of RejoinSpread after it, so
// that the nodes that all saw one member die (most often a false death)
// do not all redial it at once; a target that connects is reset.
func TestRejoinSpread(t *testing.T) {
	cfg := DefaultConfig()
	tg := &targets{cfg: cfg, list: map[string]*target{}}
	const n = 200
	for i := range n {
		a := fmt.Sprintf("192.0.2.%d:6783", i+1)
		tg.list[a] = &target{addr: a, source: SourceLearned, state: TargetConnected}
	}
	now := time.Now()
	tg.mu.Lock()
	tg.markLocked(map[string]bool{}, now)
	tg.mu.Unlock()
	lo, hi := now.Add(cfg.RetryMin), now.Add(cfg.RetryMin+cfg.RejoinSpread)
	distinct := map[time.Time]bool{}
	var early, late int
	for _, x := range tg.list {
		if x.state != TargetRetrying {
			t.Fatalf("%s is %s after its member went, want %s", x.addr, x.state, TargetRetrying)
		}
		if x.next.Before(lo) || !x.next.Before(hi) {
			t.Fatalf("%s is retried at %v after the loss, want within [%v, %v)", x.addr, x.next.Sub(now), cfg.RetryMin, cfg.RetryMin+cfg.RejoinSpread)
		}
		distinct[x.next] = true
		if x.next.Before(now.Add(cfg.RetryMin + cfg.RejoinSpread/2)) {
			early++
		} else {
			late++
		}
	}
	if len(distinct) < n/2 {
		t.Fatalf("%d targets got only %d distinct retry times: not spread", n, len(distinct))
	}
	// Uniform over the window: each half gets some (the chance that 200
	// draws all land in one half is 2^-199).
	if early == 0 || late == 0 {
		t.Fatalf("retries %d in the first half of the window, %d in the second: want both", early, late)
	}
	if due := tg.due(); len(due) != 0 {
		t.Fatalf("%d targets due right after their members went, want none before RetryMin", len(due))
	}

	// Connected again (the member refuted its death): reset, no retry.
	a := "192.0.2.1:6783"
	tg.list[a].failures = 3
	tg.mu.Lock()
	tg.markLocked(map[string]bool{a: true}, now.Add(time.Second))
	tg.mu.Unlock()
	if x := tg.list[a]; x.state != TargetConnected || x.failures != 0 {
		t.Fatalf("%s back: state %s, %d failures; want %s, 0", a, x.state, x.failures, TargetConnected)
	}
	// A target that was never connected keeps its schedule.
	b := "198.51.100.1:6783"
	next := now.Add(time.Minute)
	tg.list[b] = &target{addr: b, source: SourceLaunch, state: TargetRetrying, next: next}
	tg.mu.Lock()
	tg.markLocked(map[string]bool{}, now)
	tg.mu.Unlock()
	if !tg.list[b].next.Equal(next) {
		t.Fatalf("a retrying target's next attempt moved from %v to %v", next, tg.list[b].next)
	}
}

// A peer learned from gossip (remembered) that is live becomes a connected
// target in the same refresh: it is not joined (a full push/pull) on top
// of the gossip that told of it. One not live is retried at once, as a
// restarted node's remembered peers are.
func TestLearnedLivePeerNotJoined(t *testing.T) {
	live, gone := "192.0.2.1:6783", "192.0.2.2:6783"
	tg := &targets{cfg: DefaultConfig(), list: map[string]*target{}, remembered: map[string]bool{live: true, gone: true}}
	tg.refreshFrom([]netip.AddrPort{netip.MustParseAddrPort(live)})
	if x := tg.list[live]; x == nil || x.state != TargetConnected {
		t.Fatalf("learned live peer: target %+v, want %s", x, TargetConnected)
	}
	due := tg.due()
	if len(due) != 1 || due[0].addr != gone {
		var got []string
		for _, d := range due {
			got = append(got, d.addr)
		}
		t.Fatalf("due after refresh: %v, want only the remembered peer that is not live (%s)", got, gone)
	}
}
