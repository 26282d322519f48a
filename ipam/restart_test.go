package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestSymmetricPartitionNoReclaim: with reclaim on, a 2|2 split lets both
// halves keep allocating from their own space (a lease needs ceil(4/2) = 2
// echoes), but neither may reclaim the other (that needs 3): no duplicate,
// no tombstone, and nothing to repair after the heal.
func TestSymmetricPartitionNoReclaim(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	s := settledSim(t, 201, "10.0.0.0/23", 10*time.Second, names...)
	before := fmt.Sprint(s.nodes["a"].Ranges())
	s.part = map[string]int{"a": 1, "b": 1, "c": 2, "d": 2}
	placed := map[string]int{}
	for i := range 90 { // 9 times ReclaimAfter
		for _, n := range names {
			if simAllocate(s.nodes[n], fmt.Sprintf("%s-%d", n, i)) == nil {
				placed[n]++
			}
		}
		s.round()
		s.checkUnique(t, 201, i)
	}
	for _, n := range names {
		if got := fmt.Sprint(s.nodes[n].Ranges()); got != before {
			t.Fatalf("%s's ring changed during a 2|2 partition (a reclaim): %s, was %s", n, got, before)
		}
		if placed[n] < 60 {
			t.Errorf("%s placed only %d pods in its half: %+v", n, placed[n], s.nodes[n].Status())
		}
	}
	clear(s.part)
	s.settle(t, 10)
	s.checkUnique(t, 201, 999)
	for _, n := range names {
		if c := s.nodes[n].Status().Conflicts; len(c) > 0 {
			t.Fatalf("%s reports conflicts after the heal: %q", n, c)
		}
	}
}

// TestBlockedNamed: whatever stops progress is named in Status.
func TestBlockedNamed(t *testing.T) {
	s := settledSim(t, 202, "10.0.0.0/23", time.Minute, "a", "b", "c", "d")
	if st := s.nodes["a"].Status(); st.Blocked != "" {
		t.Fatalf("a is blocked in a healthy cluster: %q", st.Blocked)
	}
	for _, n := range []string{"b", "c", "d"} {
		s.kill(n)
	}
	s.rounds(2)
	// With 3 of 4 voters dead, a lease needs one echo a cannot get: its
	// pool runs dry and the next pod waits.
	var err error
	for i := 0; err == nil && i < 50; i++ {
		err = simAllocate(s.nodes["a"], fmt.Sprint("a-", i))
	}
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("allocation with 3 of 4 peers dead: %v, want ErrNotReady", err)
	}
	s.rounds(2) // the pool refills and waits for its echo
	// A pod waits (as the daemon's ADD would) while Status is read.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _, _ = s.nodes["a"].Allocate(ctx, "waiting", "eth0") }()
	waitFor(t, func() bool { return s.nodes["a"].Status().BlockedReason == BlockedLeaseEcho })
	st := s.nodes["a"].Status()
	cancel()
	<-done
	if !strings.Contains(st.Blocked, "waiting for lease echoes: 1 of 2 voters") {
		t.Fatalf("blocked = %q (%s), want the lease echo count", st.Blocked, st.BlockedReason)
	}
	if !strings.Contains(st.String(), "blocked: waiting for lease echoes") {
		t.Fatalf("mesh status ipam does not show it:\n%s", st)
	}
	// After a restart with nobody to talk to: recovery is named.
	s.restart(t, "a")
	st = s.nodes["a"].Status()
	if st.BlockedReason != BlockedRecovery || !strings.Contains(st.Blocked, "1 of 2 voters") {
		t.Fatalf("after a lonely restart: blocked %q (%s)", st.Blocked, st.BlockedReason)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached in 5 s")
}

// TestRecoveryAfterRestart (I6): a restarted peer sends no state of its
// own, answers no echo, until it has merged the states of a majority; a
// whole cluster restarting at once recovers by itself.
func TestRecoveryAfterRestart(t *testing.T) {
	names := []string{"a", "b", "c"}
	s := settledSim(t, 203, "10.0.0.0/24", 30*time.Second, names...)
	s.part = map[string]int{"a": 1}
	s.restart(t, "a")
	w, err := decodeState(s.nodes["a"].LocalState())
	if err != nil || !isRecoveryState(w) || len(w.st.peers) != 1 {
		t.Fatalf("a recovering peer offers more than its own info in push/pull: %+v, %v", w.st, err)
	}
	s.rounds(5)
	if st := s.nodes["a"].Status(); st.BlockedReason != BlockedRecovery {
		t.Fatalf("a recovered alone: %+v", st)
	}
	// Its own info (heartbeat, Held) still reaches the others: push/pull
	// of its self-only state.
	before, echoBefore := s.nodes["b"].st.peers["a"].Version, s.nodes["b"].liveness.echo["a"]
	if err := s.nodes["b"].MergeRemoteState(s.nodes["a"].LocalState()); err != nil {
		t.Fatal(err)
	}
	if got := s.nodes["b"].st.peers["a"].Version; got <= before {
		t.Fatalf("b did not hear recovering a's heartbeat: version %d, was %d", got, before)
	}
	// ... but it is no echo of anything of b's.
	if got := s.nodes["b"].liveness.echo["a"]; got != echoBefore {
		t.Fatalf("b counted recovering a's state as an echo: %d, was %d", got, echoBefore)
	}
	clear(s.part)
	s.rounds(4)
	if st := s.nodes["a"].Status(); st.BlockedReason == BlockedRecovery {
		t.Fatalf("a did not recover with everyone reachable: %q", st.Blocked)
	}
	w, _ = decodeState(s.nodes["a"].LocalState())
	if isRecoveryState(w) {
		t.Fatal("a still withholds its state after recovering")
	}
	// Power loss: everyone restarts at once.
	for _, n := range names {
		s.restart(t, n)
	}
	s.rounds(6)
	for _, n := range names {
		if st := s.nodes[n].Status(); st.BlockedReason == BlockedRecovery {
			t.Fatalf("%s did not recover after a cluster-wide restart: %q", n, st.Blocked)
		}
	}
	s.allocEventually(t, "b", "after-power-loss", 10)
}

// TestRestartWithHalfDeadAllocates: a healthy peer restarted while 2 of 4
// peers are dead recovers with the one live neighbour (a lease quorum)
// and places pods again.
func TestRestartWithHalfDeadAllocates(t *testing.T) {
	s := settledSim(t, 206, "10.0.0.0/23", time.Minute, "a", "b", "c", "d")
	s.kill("c")
	s.kill("d")
	s.rounds(3)
	s.restart(t, "a")
	for i := range 20 {
		s.allocEventually(t, "a", fmt.Sprint("a-", i), 10)
	}
	if st := s.nodes["a"].Status(); st.BlockedReason == BlockedRecovery {
		t.Fatalf("a still recovering: %q", st.Blocked)
	}
}

// TestRestartWithMostDeadWaitsForRmpeer (I6): peers restarted while most
// voters are dead cannot recover by themselves (no lease quorum is left to
// answer) and say what ends it; removing the dead on one of them ends the
// recovery of all, and they allocate again.
func TestRestartWithMostDeadWaitsForRmpeer(t *testing.T) {
	s := settledSim(t, 207, "10.0.0.0/23", time.Minute, "a", "b", "c", "d", "e")
	dead := []string{"c", "d", "e"}
	for _, n := range dead {
		s.kill(n)
	}
	s.rounds(3)
	s.restart(t, "a")
	s.restart(t, "b")
	s.rounds(10)
	for _, n := range []string{"a", "b"} {
		st := s.nodes[n].Status()
		if st.BlockedReason != BlockedRecovery || !strings.Contains(st.Blocked, "only 2 of the 5 voters are members") || !strings.Contains(st.Blocked, "mesh rmpeer") {
			t.Fatalf("%s: blocked %q (%s), want recovery naming rmpeer", n, st.Blocked, st.BlockedReason)
		}
	}
	for _, n := range dead {
		if _, err := s.nodes["a"].RemovePeer(n); err != nil {
			t.Fatalf("rmpeer %s: %v", n, err)
		}
	}
	// b answered a's requests already: the removal itself ends a's
	// recovery, with no further round.
	if st := s.nodes["a"].Status(); st.BlockedReason == BlockedRecovery {
		t.Fatalf("a still recovering right after removing the dead: %q", st.Blocked)
	}
	s.rounds(4)
	for _, n := range []string{"a", "b"} {
		if st := s.nodes[n].Status(); st.BlockedReason == BlockedRecovery {
			t.Fatalf("%s still recovering after the dead were removed: %q", n, st.Blocked)
		}
		s.allocEventually(t, n, n+"-after-rmpeer", 10)
	}
	s.checkUnique(t, 207, 0)
}

// TestStateFileFromPreviousRelease: a format 1 file without a gateway (as
// the previous release wrote it) loads without manual steps; the gateway
// is then the address that release used, and is recorded from then on.
func TestStateFileFromPreviousRelease(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	a := mustNew(t, cfg, nil)
	pod := mustAlloc(t, a, "c1", "eth0")
	a.Close()
	// Rewrite the file as the previous release did: no gateway field.
	raw, err := os.ReadFile(cfg.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["gateway"]; !ok {
		t.Fatalf("state file has no gateway: %s", raw)
	}
	if string(m["format"]) != "1" {
		t.Fatalf("format %s, want 1 (old readers must keep loading it)", m["format"])
	}
	delete(m, "gateway")
	old, _ := json.Marshal(m)
	if err := os.WriteFile(cfg.StateFile, old, 0o600); err != nil {
		t.Fatal(err)
	}
	b := mustNew(t, cfg, nil)
	if got := mustAlloc(t, b, "c1", "eth0"); got != pod {
		t.Fatalf("pod has %v after the upgrade, had %v", got, pod)
	}
	if gw, ok := b.OverlayIP(); !ok || gw != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("gateway after the upgrade: %v, %v", gw, ok)
	}
	raw, _ = os.ReadFile(cfg.StateFile)
	if !strings.Contains(string(raw), `"gateway"`) {
		t.Fatalf("gateway not recorded after loading an old file:\n%s", raw)
	}
	b.Close()
	// With reclaim on, the gateway the old release had published in Held
	// stays on the bridge through the upgrade restart.
	if err := os.WriteFile(cfg.StateFile, old, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.ReclaimAfter = time.Minute
	c, err := newAllocator(cfg, nopTransport{}, diskStore{})
	if err != nil {
		t.Fatal(err)
	}
	// Pretend two more voters exist, so an echo would really be needed.
	c.mu.Lock()
	c.st.peers["b"] = peerInfo{Version: 1, ID: "id-b"}
	c.st.peers["c"] = peerInfo{Version: 1, ID: "id-c"}
	c.mu.Unlock()
	if gw, ok := c.OverlayIP(); !ok || gw != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("with reclaim on, gateway right after the upgrade: %v, %v", gw, ok)
	}
}

// TestGatewayKeptWhenSpaceLost: a peer that loses the space containing its
// gateway (rmpeer while alive) keeps it: still Held, still reported, never
// handed to a pod by the new owner.
func TestGatewayKeptWhenSpaceLost(t *testing.T) {
	s := settledSim(t, 204, "10.0.0.0/26", 0, "a", "b", "c")
	gw, _ := s.nodes["b"].OverlayIP()
	s.allocEventually(t, "b", "b-0", 5)
	s.part = map[string]int{"b": 1}
	s.rounds(2)
	if _, err := s.nodes["a"].RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	s.rounds(2)
	clear(s.part)
	s.settle(t, 10)
	s.rounds(5)
	if now, ok := s.nodes["b"].OverlayIP(); !ok || now != gw {
		t.Fatalf("b's gateway is %v, %v after losing its space; was %v", now, ok, gw)
	}
	for i := range 60 {
		for _, n := range []string{"a", "c"} {
			if simAllocate(s.nodes[n], fmt.Sprintf("%s-%d", n, i)) == nil {
				if addr := s.nodes[n].pods[Key{fmt.Sprintf("%s-%d", n, i), "eth0"}]; addr == gw {
					t.Fatalf("%s gave b's gateway %v to a pod", n, gw)
				}
			}
		}
		s.round()
	}
	s.checkUnique(t, 204, 0)
}

// TestMergePersistsBeforeReturning (I4): what a merge taught this peer
// about others (their Held) is in the state file when MergeRemoteState
// returns, even when the ring did not change.
func TestMergePersistsBeforeReturning(t *testing.T) {
	s := newSimNet(205)
	for _, n := range []string{"a", "b"} {
		s.add(t, n, "10.0.0.0/24", 2, 0)
	}
	s.settle(t, 5)
	s.allocEventually(t, "b", "b-0", 5)
	if err := s.nodes["a"].MergeRemoteState(s.nodes["b"].LocalState()); err != nil {
		t.Fatal(err)
	}
	l, ok, err := loadFile(s.store, s.nodes["a"].cfg.StateFile, s.nodes["a"].cfg)
	if err != nil || !ok {
		t.Fatal(err)
	}
	want := s.nodes["b"].Allocator.st.peers["b"].Held
	if got := l.st.peers["b"].Held; !slices.Equal(got, want) {
		t.Fatalf("a's state file has b's Held %v, b publishes %v", got, want)
	}
}

// TestNodeDeletionReservationsEndWithRmpeer: a deleted Node's last Held
// stays reserved, is reported, and an operator's rmpeer returns it.
func TestNodeDeletionReservationsEndWithRmpeer(t *testing.T) {
	s, bPods := threeWithPodsOnB(t, 207, 5)
	s.kill("b")
	for _, n := range []string{"a", "c"} {
		if _, err := s.nodes[n].RemovePeerAuthoritative("b"); err != nil {
			t.Fatal(err)
		}
	}
	s.settle(t, 5)
	st := s.nodes["c"].Status()
	if !slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "deleted node b stay reserved") }) {
		t.Fatalf("reserved addresses of the deleted node not reported: %q", st.Problems)
	}
	if _, err := s.nodes["a"].RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	s.settle(t, 5)
	reused := 0
	for _, n := range []string{"a", "c"} {
		for _, addr := range s.fillAll(t, n, n+"-fill", 3) {
			if bPods[addr] {
				reused++
			}
		}
	}
	if reused != len(bPods) {
		t.Fatalf("after rmpeer %d of the deleted node's %d addresses came back into use", reused, len(bPods))
	}
	if st := s.nodes["c"].Status(); slices.ContainsFunc(st.Problems, func(p string) bool { return strings.Contains(p, "deleted node") }) {
		t.Fatalf("still reported after rmpeer: %q", st.Problems)
	}
}

// TestVersionsGrowAcrossRestartWithClockBack (I4 for our own info): a
// restart continues above every version published before it, even when the
// clock went back meanwhile, so an echo of an old version can never be
// taken for an echo of a new one.
func TestVersionsGrowAcrossRestartWithClockBack(t *testing.T) {
	clock := newClock()
	cfg := testConfig(t, "a", "10.0.0.0/24")
	cfg.Now = clock.Now
	a := mustNew(t, cfg, nil)
	var last uint64
	for range 20 {
		clock.Advance(time.Minute)
		a.Tick()
		last = a.st.peers["a"].Version
	}
	// SIGKILL: no Close. The clock goes back an hour.
	clock.Advance(-time.Hour)
	b := mustNew(t, cfg, nil)
	if got := b.st.peers["a"].Version; got <= last {
		t.Fatalf("after a restart with the clock an hour back, version %d; %d was published before", got, last)
	}
}

// threeWithPodsOnB is a settled simulation of peers a, b and c sharing a
// /24, with pods pods on b, and b's pod addresses.
func threeWithPodsOnB(t *testing.T, seed uint64, pods int) (*simNet, map[netip.Addr]bool) {
	t.Helper()
	s := newSimNet(seed)
	for _, n := range []string{"a", "b", "c"} {
		s.add(t, n, "10.0.0.0/24", 3, 0)
	}
	s.settle(t, 10)
	for i := range pods {
		s.allocEventually(t, "b", fmt.Sprint("b-", i), 5)
	}
	s.settle(t, 5)
	return s, podAddrs(s.nodes["b"])
}
