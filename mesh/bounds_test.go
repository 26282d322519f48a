package mesh

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// TestMemberMapBounded: invented names announced by a peer holding the key
// (dead at once) never grow the member map beyond maxMembers, and live
// members and self are never the ones dropped.
func TestMemberMapBounded(t *testing.T) {
	for _, tc := range []struct {
		name    string
		invent  int
		state   api.MemberState
		wantMax int
	}{
		{"thousands of dead invented names", 3 * maxMembers, api.MemberDead, maxMembers},
		{"thousands of left invented names", 3 * maxMembers, api.MemberLeft, maxMembers},
		{"a few, under the bound", 10, api.MemberDead, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &Membership{members: map[string]*Member{}, byeFrom: map[string]bool{}}
			m.members["self"] = &Member{Name: "self", Self: true, State: api.MemberAlive}
			m.members["live"] = &Member{Name: "live", State: api.MemberAlive, Since: time.Unix(0, 0)}
			start := time.Now()
			for i := range tc.invent {
				name := fmt.Sprintf("fake-%d", i)
				m.members[name] = &Member{Name: name, State: tc.state, Since: start.Add(time.Duration(i))}
				m.pruneMembersLocked()
			}
			if len(m.members) > tc.wantMax {
				t.Fatalf("member map holds %d, bound %d", len(m.members), tc.wantMax)
			}
			if m.members["self"] == nil || m.members["live"] == nil {
				t.Fatal("a live member or self was dropped")
			}
			if last := fmt.Sprintf("fake-%d", tc.invent-1); m.members[last] == nil {
				t.Fatal("the newest member was dropped rather than the oldest")
			}
		})
	}
}

// TestByeOnlyFromLiveMembers: goodbyes under invented names are not kept.
func TestByeOnlyFromLiveMembers(t *testing.T) {
	m := &Membership{members: map[string]*Member{
		"self": {Name: "self", Self: true, State: api.MemberAlive},
		"b":    {Name: "b", State: api.MemberAlive},
		"dead": {Name: "dead", State: api.MemberDead},
	}}
	for _, tc := range []struct {
		name string
		want bool
	}{{"b", true}, {"dead", false}, {"self", false}, {"invented", false}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := m.byeAllowedLocked(tc.name); got != tc.want {
				t.Fatalf("bye from %s allowed = %v", tc.name, got)
			}
		})
	}
}

// TestRememberedPeersBounded: addresses learned from gossip (memberlist
// admits any a key holder announces) stay within maxRemembered, and the
// addresses of live members are kept.
func TestRememberedPeersBounded(t *testing.T) {
	tg := &targets{list: map[string]*target{}, remembered: map[string]bool{}}
	live := map[netip.AddrPort]bool{}
	for i := range 10 {
		ap := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 6783)
		live[ap] = true
		tg.remembered[ap.String()] = true
	}
	for i := range 5000 {
		a := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 6783).String()
		if tg.evictRememberedLocked(live) {
			tg.remembered[a] = true
			tg.list[a] = &target{addr: a, source: SourceLearned}
		}
	}
	if len(tg.remembered) > maxRemembered || len(tg.list) > maxRemembered {
		t.Fatalf("remembered %d, targets %d, bound %d", len(tg.remembered), len(tg.list), maxRemembered)
	}
	for ap := range live {
		if !tg.remembered[ap.String()] {
			t.Fatalf("live member %v forgotten", ap)
		}
	}
}
