package ipam

import (
	"slices"
	"testing"
)

// The reclaim heir rule needs causal closure (docs/ipam.md, "Why the heir
// is unique"; docs/scale.md, "Design: delta gossip of the IPAM state"): a
// Node is deleted, the heir claims its space and then gives the address
// just below it to another peer. Delivered as a whole state, the transfer
// carries the claim and the new owner of that address leaves the space
// alone. Delivered as "the entries that changed" (the transfer without
// the claim it depends on), the new owner inherits the space a second
// time: both peers believe they own the same addresses (I1 broken), so
// both may hand them out. This pins down the
// property any delta gossip must keep, and shows the simulation's checks
// reach it.
func TestHeirNeedsCausalClosure(t *testing.T) {
	tests := []struct {
		name       string
		changeOnly bool // deliver the transfer without the claim
		wantShared bool // the two peers hand out the same addresses
	}{
		{name: "whole state", changeOnly: false, wantShared: false},
		{name: "changed entries only", changeOnly: true, wantShared: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := settledSim(t, 21, "10.0.0.0/24", 0, "a", "b", "c")
			ring := s.nodes["a"].Allocator.st.ring
			runs := ring.spans(func(e entry) bool { return e.Owner == "b" })
			if len(runs) != 1 || runs[0].start == 0 {
				t.Fatalf("want one run of b not at offset 0, got %+v", runs)
			}
			run := runs[0]
			pred := run.start - 1
			heir := ring.get(pred).Owner
			other := map[string]string{"a": "c", "c": "a"}[heir]
			if other == "" {
				t.Fatalf("heir of b is %q, want a or c", heir)
			}

			// b's Node is deleted: every daemon gets the event and writes
			// the same tombstone. other is cut off from the heir, which
			// claims b's space (and confirms the claim, b being removed).
			s.part = map[string]int{"b": 1, other: 2}
			s.membersKey = ""
			for _, n := range []string{heir, other} {
				if _, err := s.nodes[n].RemovePeerAuthoritative("b"); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				s.nodes[heir].Tick()
				s.nodes[other].Tick()
				s.deliver(len(s.queue) * 2)
			}
			if e := s.nodes[other].Allocator.st.ring.get(run.start); e.Owner != "" || e.Dead != "b" {
				t.Fatalf("%s should see b's tombstone, sees %+v", other, e)
			}
			if e := s.nodes[heir].Allocator.st.ring.get(run.start); e.Owner != heir || e.Dead != "" {
				t.Fatalf("heir %s should own b's space, has %+v", heir, e)
			}
			s.transfer(t, heir, other, span{pred, pred + 1})

			var msg []byte
			if tc.changeOnly {
				h, o := s.nodes[heir].Allocator, s.nodes[other].Allocator
				tomb := o.st.ring.get(run.start)
				st := state{seed: h.st.seed, ring: h.st.ring.update(run.start, run.end, func(entry) entry { return tomb }), peers: h.st.peers}
				msg = encodeState(h.cfg.Range, heir, st)
			} else {
				msg = s.nodes[heir].LocalState()
			}
			if err := s.nodes[other].MergeRemoteState(msg); err != nil {
				t.Fatal(err)
			}
			if e := s.nodes[other].Allocator.st.ring.get(pred); e.Owner != other {
				t.Fatalf("%s should own offset %d after the transfer, has %+v", other, pred, e)
			}

			var got [2][]uint64
			for i, n := range []string{heir, other} {
				for range 3 {
					s.nodes[n].Tick()
					s.deliver(len(s.queue) * 2)
				}
				r := s.nodes[n].Allocator.st.ring
				for off := run.start; off < run.end; off++ {
					if e := r.get(off); e.Owner == n && e.Dead == "" {
						got[i] = append(got[i], off)
					}
				}
			}
			t.Logf("heir %s owns %d, %s owns %d of b's %d former offsets", heir, len(got[0]), other, len(got[1]), run.len())
			shared := slices.ContainsFunc(got[0], func(off uint64) bool { return slices.Contains(got[1], off) })
			if shared != tc.wantShared {
				t.Fatalf("%s owns %d and %s owns %d offsets of b's former space; shared=%v, want %v", heir, len(got[0]), other, len(got[1]), shared, tc.wantShared)
			}
		})
	}
}
