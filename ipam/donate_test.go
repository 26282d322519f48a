package ipam

import "testing"

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
