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
