package ipam

import (
	"fmt"
	"testing"
)

// A donor answers a space request from a node the membership already knows
// live even before SetMembers has fed it that node, and still never gives
// space to a name the membership does not know.
func TestDonateToFreshMember(t *testing.T) {
	tests := []struct {
		name      string
		isMember  func(string) bool
		wantGiven bool
	}{
		{"membership knows the newcomer", func(n string) bool { return n != "stranger" }, true},
		{"membership does not know it", func(n string) bool { return n == "a" || n == "b" }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := settledSim(t, 1, "10.0.0.0/22", 0, "a", "b")
			given := false
			for _, name := range []string{"a", "b"} { // whichever owns space
				d := s.nodes[name]
				d.Allocator.cfg.IsMember = tc.isMember
				d.SetMembers(map[string]bool{"a": true, "b": true}) // not yet "c"
				if err := d.HandleMessage("c", appendString([]byte{msgAsk}, "c")); err != nil {
					t.Fatalf("%s handling c's space request: %v", name, err)
				}
				d.mu.Lock()
				given = given || len(d.st.ring.owned("c")) > 0
				d.mu.Unlock()
			}
			if given != tc.wantGiven {
				t.Fatalf("space given to c: %v, want %v", given, tc.wantGiven)
			}
		})
	}
}

// A space request from a node the donor's membership does not know yet is
// held: the donor gives space once the membership reports it live (the
// gossip that announces a joining node may trail its first request), and
// never to a name that stays unknown; the held requests are bounded and
// expire.
func TestDonateHeldUntilRequesterLive(t *testing.T) {
	s := settledSim(t, 1, "10.0.0.0/22", 0, "a", "b")
	live := map[string]bool{"a": true, "b": true}
	var donors []*simNode
	for _, name := range []string{"a", "b"} {
		d := s.nodes[name]
		d.Allocator.cfg.IsMember = func(n string) bool { return live[n] }
		donors = append(donors, d)
	}
	owned := func(name string) bool {
		for _, d := range donors {
			d.mu.Lock()
			n := len(d.st.ring.owned(name))
			d.mu.Unlock()
			if n > 0 {
				return true
			}
		}
		return false
	}
	for _, d := range donors {
		for i := range maxHeldAsks + 5 {
			if err := d.HandleMessage("x", appendString([]byte{msgAsk}, fmt.Sprintf("stranger%d", i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.HandleMessage("c", appendString([]byte{msgAsk}, "c")); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		held := len(d.heldAsks)
		d.mu.Unlock()
		if held > maxHeldAsks {
			t.Fatalf("%d requests held, bound %d", held, maxHeldAsks)
		}
	}
	if owned("c") {
		t.Fatal("space given to c before the membership knew it")
	}
	// c's request is the 22nd: beyond the bound, so ask again now that
	// the strangers fill the table, then let the membership learn of c.
	for _, d := range donors {
		d.mu.Lock()
		d.heldAsks = nil
		d.mu.Unlock()
		if err := d.HandleMessage("c", appendString([]byte{msgAsk}, "c")); err != nil {
			t.Fatal(err)
		}
	}
	live["c"] = true
	for _, d := range donors {
		d.SetMembers(map[string]bool{"a": true, "b": true, "c": true})
	}
	if !owned("c") {
		t.Fatal("no space given to c once the membership knew it live")
	}
	// The strangers never became members: after askEvery ticks their
	// requests are gone and none got space.
	for range askEvery + 2 {
		for _, d := range donors {
			d.Tick()
		}
	}
	for _, d := range donors {
		d.mu.Lock()
		held := len(d.heldAsks)
		d.mu.Unlock()
		if held != 0 {
			t.Fatalf("%d requests still held after %d ticks", held, askEvery+2)
		}
	}
	for i := range maxHeldAsks + 5 {
		if owned(fmt.Sprintf("stranger%d", i)) {
			t.Fatalf("space given to stranger%d", i)
		}
	}
}
