package ipam

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// joiningIn says how viewer sees name: joining, or a voter.
func (s *simNet) joiningIn(viewer, name string) bool {
	a := s.nodes[viewer].Allocator
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.peers[name].Joining
}

// TestJoinerVotesOnceAllHoldIt: a peer that joins a running mesh with
// reclaim on is joining (in its own view and the others'), its state
// counts as no echo meanwhile, and it votes once every peer holds its info.
func TestJoinerVotesOnceAllHoldIt(t *testing.T) {
	names := []string{"a", "b", "c"}
	s := settledSim(t, 301, "10.0.0.0/24", 30*time.Second, names...)
	s.add(t, "j", "10.0.0.0/24", len(names), 30*time.Second)
	sawJoining := false
	for i := 0; i < 30 && (!sawJoining || s.joiningIn("j", "j")); i++ {
		s.round()
		if s.joiningIn("j", "j") {
			sawJoining = true
			// While it is joining, no voter counts its state as an
			// echo, whatever it holds.
			for _, n := range names {
				a := s.nodes[n].Allocator
				a.mu.Lock()
				v, echoed := a.liveness.echo["j"]
				a.mu.Unlock()
				if echoed {
					t.Fatalf("%s counted joining j's state as an echo (version %d)", n, v)
				}
			}
		}
	}
	if !sawJoining {
		t.Fatal("j never published itself as joining")
	}
	if s.joiningIn("j", "j") {
		t.Fatalf("j still joining after 30 rounds with every peer reachable: %+v", s.nodes["j"].Status())
	}
	s.settle(t, 5)
	for _, n := range names {
		if s.joiningIn(n, "j") {
			t.Errorf("%s still sees j as joining after it was admitted", n)
		}
	}
	// Without Config.Admission (a member of the previous release), a
	// joiner votes at once.
	s.noAdmission = true
	s.add(t, "k", "10.0.0.0/24", len(names), 30*time.Second)
	for range 10 {
		s.round()
		if s.joiningIn("k", "k") {
			t.Fatal("k is joining although a member does not read the flag")
		}
	}
}

// TestJoinerWaitsForDeadVoter: a voter that is gone (not removed) holds a
// joiner back, status says so and names the way out, and rmpeer of the dead
// one lets the joiner vote.
func TestJoinerWaitsForDeadVoter(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	s := settledSim(t, 302, "10.0.0.0/24", 30*time.Second, names...)
	s.kill("d")
	s.add(t, "j", "10.0.0.0/24", len(names), 30*time.Second)
	s.rounds(20)
	if !s.joiningIn("j", "j") {
		t.Fatal("j votes although dead d never held its info")
	}
	st := s.nodes["j"].Status()
	if !slices.ContainsFunc(st.Problems, func(p string) bool {
		return strings.Contains(p, "does not vote") && strings.Contains(p, "(d)") && strings.Contains(p, "mesh rmpeer")
	}) {
		t.Fatalf("status does not say that d holds j's vote back: %q", st.Problems)
	}
	// It asks only the peer it still lacks, not every peer again.
	asked := map[string]int{}
	s.onSend = func(from, to string, msg []byte) {
		if from == "j" && len(msg) > 0 && msg[0] == msgEchoReq {
			asked[to]++
		}
	}
	s.rounds(6)
	s.onSend = nil
	if len(asked) != 1 || asked["d"] == 0 {
		t.Fatalf("joining j sent echo requests to %v, want to d alone", asked)
	}
	if !slices.ContainsFunc(s.nodes["a"].Status().Peers, func(p PeerStatus) bool { return p.Name == "j" && p.Joining }) {
		t.Fatalf("a's status does not show j joining: %+v", s.nodes["a"].Status().Peers)
	}
	if _, err := s.nodes["a"].RemovePeer("d"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30 && s.joiningIn("j", "j"); i++ {
		s.round()
	}
	if s.joiningIn("j", "j") {
		t.Fatalf("j still joining after d was removed: %+v", s.nodes["j"].Status())
	}
}

// TestRegressionJoinersOnBothSidesOfPartition replays, by hand and small,
// soak seed 31 of TestSimulationRestarts: a partition with a joiner on one
// side and two on the other. Counting the joiners as voters, the side of
// a, b and j1 leased new pool addresses (3 of 6 voters), while the other
// side, c, d, e, j2 and j3 (5 of 7, a reclaim quorum), tombstoned a's and
// b's space and its heirs handed out what a had leased: the two quorums
// shared no voter. With joiners voting only once every peer holds them,
// neither side does either, and no address is held twice. The variant
// without admission shows the test finds the duplicate.
func TestRegressionJoinersOnBothSidesOfPartition(t *testing.T) {
	for _, tc := range []struct {
		name      string
		admission bool
	}{
		{"admission", true},
		{"without-admission", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const prefix, reclaim = "10.0.0.0/24", 8 * time.Second
			names := []string{"a", "b", "c", "d", "e"}
			s := settledSim(t, 303, prefix, reclaim, names...)
			s.noAdmission = !tc.admission
			s.rounds(3)
			s.part = map[string]int{"a": 1, "b": 1, "j1": 1}
			s.add(t, "j1", prefix, len(names), reclaim)
			s.add(t, "j2", prefix, len(names), reclaim)
			s.add(t, "j3", prefix, len(names), reclaim)
			dup := ""
			for i := 0; i < 120 && dup == ""; i++ {
				for _, n := range slices.Sorted(maps.Keys(s.nodes)) {
					_ = simAllocate(s.nodes[n], fmt.Sprintf("%s-%d", n, i))
				}
				s.round()
				_, dup = s.podHolders()
			}
			switch {
			case tc.admission && dup != "":
				t.Fatalf("an address was handed out twice across the partition: %s", dup)
			case !tc.admission && dup == "":
				t.Fatal("without admission the scenario no longer hands out an address twice: it tests nothing")
			case !tc.admission:
				t.Logf("without admission: %s", dup)
			}
			if !tc.admission {
				return
			}
			for _, j := range []string{"j1", "j2", "j3"} {
				if !s.joiningIn(j, j) {
					t.Errorf("%s votes during the partition", j)
				}
			}
			clear(s.part)
			s.settle(t, 10)
			for i := 0; i < 30; i++ {
				s.round()
			}
			s.checkUnique(t, 303, 999)
			for _, j := range []string{"j1", "j2", "j3"} {
				if s.joiningIn(j, j) {
					t.Errorf("%s still joining after the partition healed: %+v", j, s.nodes[j].Status())
				}
			}
		})
	}
}

// TestWhoJoins: the peers of the first split vote at once, and so do the
// peers of a ring that loses a seeding clash (they had a ring of their
// own); a peer removed while alive is a joiner again when it comes back,
// and votes once every peer holds its new info.
func TestWhoJoins(t *testing.T) {
	const prefix, reclaim = "10.0.0.0/24", 30 * time.Second
	t.Run("first split", func(t *testing.T) {
		names := []string{"a", "b", "c", "d"}
		s := settledSim(t, 311, prefix, reclaim, names...)
		for _, n := range names {
			if s.joiningIn(n, n) {
				t.Errorf("%s, a peer of the first split, is joining", n)
			}
		}
	})
	t.Run("seeding clash", func(t *testing.T) {
		s := newSimNet(312)
		for _, n := range []string{"a", "b", "c", "d"} {
			s.add(t, n, prefix, 2, reclaim)
		}
		s.part = map[string]int{"a": 1, "b": 1, "c": 2, "d": 2}
		s.rounds(30)
		if s.nodes["a"].Status().Seed == s.nodes["c"].Status().Seed {
			t.Fatal("the two halves did not seed apart")
		}
		clear(s.part)
		s.settle(t, 10)
		for _, n := range []string{"a", "b", "c", "d"} {
			if s.joiningIn(n, n) {
				t.Errorf("%s is joining after a seeding clash", n)
			}
		}
	})
	t.Run("removed while alive", func(t *testing.T) {
		s := settledSim(t, 313, prefix, reclaim, "a", "b", "c", "d", "e")
		s.part = map[string]int{"e": 1}
		s.rounds(2)
		if _, err := s.nodes["a"].RemovePeer("e"); err != nil {
			t.Fatal(err)
		}
		s.rounds(3)
		clear(s.part)
		sawJoining := false
		for i := 0; i < 40 && (!sawJoining || s.joiningIn("e", "e")); i++ {
			s.round()
			// In its own view: with everyone reachable it may vote
			// again within the round that made it a joiner.
			sawJoining = sawJoining || s.joiningIn("e", "e")
		}
		if !sawJoining {
			t.Fatal("e, removed while alive, came back voting at once")
		}
		if s.joiningIn("e", "e") {
			t.Fatalf("e still joining 40 rounds after the heal: %+v", s.nodes["e"].Status())
		}
	})
}

// TestJoinersBehindDeadVoterBlockLeases: joiners held back by a dead,
// unremoved voter count in N without answering, so once they outnumber
// the live voters a voter's new leases wait; status names why, and rmpeer
// of the dead voter lets the joiners vote and the leases through.
func TestJoinersBehindDeadVoterBlockLeases(t *testing.T) {
	const prefix, reclaim = "10.0.0.0/24", 10 * time.Minute // no reclaim meanwhile
	s := settledSim(t, 314, prefix, reclaim, "a", "b", "c")
	s.kill("c")
	for _, j := range []string{"j1", "j2", "j3"} {
		s.add(t, j, prefix, 3, reclaim)
	}
	s.rounds(10)
	// N is 6 (c and the joiners included): a lease needs 3 voters, and
	// only a and b answer.
	placed := 0
	for i := range 20 {
		if simAllocate(s.nodes["a"], fmt.Sprintf("a-%d", i)) == nil {
			placed++
		}
		s.round()
	}
	if placed >= 20 {
		t.Fatalf("a placed all %d pods behind 3 joiners and a dead voter", placed)
	}
	// While a pod waits, status says for what.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := s.nodes["a"].Allocate(ctx, "a-waiting", "eth0"); done <- err }()
	var st Status
	for i := 0; i < 200 && st.BlockedReason != BlockedLeaseEcho; i++ {
		time.Sleep(5 * time.Millisecond)
		st = s.nodes["a"].Status()
	}
	cancel()
	<-done
	if st.BlockedReason != BlockedLeaseEcho || !strings.Contains(st.Blocked, "3 joining peers count among the voters") {
		t.Fatalf("a placed %d of 20 pods; while one waits, blocked %q %q", placed, st.BlockedReason, st.Blocked)
	}
	if _, err := s.nodes["a"].RemovePeer("c"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30 && (s.joiningIn("a", "j1") || s.joiningIn("a", "j2") || s.joiningIn("a", "j3")); i++ {
		s.round()
	}
	s.rounds(3) // the pool's next echo
	for _, j := range []string{"j1", "j2", "j3"} {
		if s.joiningIn("a", j) {
			t.Errorf("%s still joining after rmpeer of the dead voter", j)
		}
	}
	if err := simAllocate(s.nodes["a"], "a-after"); err != nil {
		t.Fatalf("a cannot place a pod after the rmpeer: %v (%+v)", err, s.nodes["a"].Status())
	}
	s.checkUnique(t, 314, 0)
}
