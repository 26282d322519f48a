package ipam

import (
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Convergence of a settled mesh after a join, a leave and a partition
// heal, measured with the deterministic simulation (docs/scale.md, "IPAM
// convergence"): simulated seconds and bytes per node. Messages are
// delivered within the second they are sent, so the times count ticks and
// push/pull rounds, not network latency.
var (
	convSizes = flag.String("ipam.conv.sizes", "", "comma-separated peer counts for TestScaleConvergence (default 30; MESH_SOAK=1: 100,300,1000)")
	// The Node deletion makes every node send its whole state to every
	// other: N² messages of O(N) bytes, as much CPU in the simulation
	// (about 15 minutes at 1000 peers), so it is measured up to this size.
	convDeleteMax = flag.Int("ipam.conv.deletemax", 1000, "largest size at which TestScaleConvergence simulates a Node deletion")
	// The heal is push/pull of whole states until every ring agrees:
	// about 4 minutes of CPU at 2000 peers, growing faster than N².
	convHealMax = flag.Int("ipam.conv.healmax", 2000, "largest size at which TestScaleConvergence simulates a partition heal")
	// The mesh with automatic reclaim is a second settled mesh, and its
	// allocations and reclaim take simulated minutes of lease echoes and
	// push/pull (about 1.5 s of CPU at 30 peers, 45 s at 100; at 300 it
	// ran 15 minutes and grew past 7 GiB unfinished: the echoes of one
	// reclaim are ~N² whole states).
	convReclaimMax = flag.Int("ipam.conv.reclaimmax", 30, "largest size at which TestScaleConvergence simulates a mesh with automatic reclaim")
)

// convReclaimAfter is the --ipalloc-reclaim-after of the reclaim mesh.
const convReclaimAfter = time.Minute

// measureReclaim measures a mesh with automatic reclaim: its traffic at
// rest (the lease echoes) and a node's death until its space is reclaimed.
func measureReclaim(t *testing.T, n int) []convPhase {
	t.Helper()
	s, names := settledScaleSimReclaim(t, n, convReclaimAfter)
	// At rest: ReclaimAfter of simulated time, nothing happening.
	rest := 0
	restP := countPhase(t, s, fmt.Sprintf("reclaim on: at rest for %v (push/pull)", convReclaimAfter), true, func() {}, int(convReclaimAfter/time.Second), func() string {
		rest++
		if rest < int(convReclaimAfter/time.Second) {
			return "resting"
		}
		return ""
	})
	gone := names[n/2]
	leave := countPhase(t, s, fmt.Sprintf("reclaim on: leave, reclaimed after %v", convReclaimAfter), true, func() { s.kill(gone) }, 20*int(convReclaimAfter/time.Second), func() string {
		return cmpOr(cmpOr(s.ringsEqual(), ownedBy(s, gone)), s.unowned())
	})
	// A node joins and votes once every peer holds its info (docs/ipam.md,
	// "Joining as a voter"): each answers with its whole state. On a mesh
	// of its own, settled a moment ago: on the one above, a minute at rest
	// with a 1 min ReclaimAfter lets push/pull alone leave some node
	// unheard for that long at 100 nodes, and the reclaims of live nodes
	// that follow would be counted as the join's.
	s, names = settledScaleSimReclaim(t, n, convReclaimAfter)
	joiner := "joiner-r.cluster.local"
	join := countPhase(t, s, "reclaim on: join, until the joiner votes", true, func() {
		s.add(t, joiner, "10.32.0.0/12", n, convReclaimAfter)
		joinPushPull(s, joiner, names[0])
	}, 60, func() string {
		if d := s.ringsEqual(); d != "" {
			return d
		}
		if !ownsSpace(s.nodes[joiner]) {
			return "the joiner owns no space"
		}
		for _, v := range slices.Sorted(maps.Keys(s.nodes)) {
			if s.joiningIn(v, joiner) {
				return v + " sees the joiner joining"
			}
		}
		return ""
	})
	return []convPhase{restP, leave, join}
}

// countPhase runs one event on s (start, then simulated seconds, with
// push/pull if pushPull, until done reports "", at most limit) and returns
// what it cost.
func countPhase(t *testing.T, s *simNet, name string, pushPull bool, start func(), limit int, done func() string) convPhase {
	t.Helper()
	s.sent, s.recv, s.msgs = map[string]int{}, map[string]int{}, 0
	start()
	p := convPhase{name: name, seconds: converge(t, s, pushPull, limit, done)}
	if p.seconds < 0 {
		kinds := map[byte]int{}
		for _, m := range s.queue {
			kinds[m.data[0]]++
		}
		t.Errorf("n=%d: %s: not converged after %d simulated seconds: %s (queued by kind: %v)", len(s.nodes), name, limit, done(), kinds)
	}
	p.total = sum(s.sent)
	p.mean = float64(p.total) / float64(len(s.nodes))
	for _, v := range s.sent {
		p.maxSent = max(p.maxSent, v)
	}
	for _, v := range s.recv {
		p.maxRecv = max(p.maxRecv, v)
	}
	p.msgs = s.msgs
	s.sent, s.recv = nil, nil
	s.shareHeld()
	return p
}

// heapInUseMiB is the heap in use after a collection: what the
// simulation holds, for the memory figures of docs/scale.md.
func heapInUseMiB() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse >> 20
}

// convPhase is what one event cost until the mesh agreed again.
type convPhase struct {
	name    string
	seconds int     // simulated seconds until every ring agreed
	total   int     // bytes all transports carried, push/pull included where it runs
	mean    float64 // total / live nodes
	maxSent int     // most bytes one node sent
	maxRecv int     // most bytes one node received
	msgs    int     // messages and push/pull halves
}

func TestScaleConvergence(t *testing.T) {
	sizes := []int{30}
	if os.Getenv("MESH_SOAK") != "" {
		sizes = []int{100, 300, 1000}
	}
	if *convSizes != "" {
		sizes = nil
		for _, f := range strings.Split(*convSizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 4 {
				t.Fatalf("-ipam.conv.sizes: bad size %q (at least 4)", f)
			}
			sizes = append(sizes, n)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%6s %-46s %8s %14s %12s %12s %12s %10s\n", "N", "event", "seconds", "total B", "mean/node B", "max sent B", "max recv B", "messages")
	for _, n := range sizes {
		start := time.Now()
		phases := measureConvergence(t, n)
		if n <= *convReclaimMax {
			phases = append(phases, measureReclaim(t, n)...)
		}
		var rows strings.Builder
		for _, p := range phases {
			fmt.Fprintf(&rows, "%6d %-46s %8d %14d %12.0f %12d %12d %10d\n", n, p.name, p.seconds, p.total, p.mean, p.maxSent, p.maxRecv, p.msgs)
		}
		// Each size as it is done: the large ones take many minutes.
		t.Logf("n=%d measured in %v:\n%s", n, time.Since(start).Round(time.Millisecond), rows.String())
		b.WriteString(rows.String())
	}
	t.Log(b.String())
}

// measureConvergence runs the events one after the other on one settled
// n-node mesh.
func measureConvergence(t *testing.T, n int) []convPhase {
	t.Helper()
	began := time.Now()
	s, names := settledScaleSim(t, n)
	// The large sizes run for many minutes: each step is logged as it ends
	// (with -v), with the heap the simulation holds then.
	t.Logf("n=%d: settled in %v, heap %d MiB", n, time.Since(began).Round(time.Second), heapInUseMiB())
	var out []convPhase
	// phase counts what start sends and the seconds after it until done
	// reports "".
	phase := func(name string, pushPull bool, limit int, start func(), done func() string) {
		t.Helper()
		began := time.Now()
		out = append(out, countPhase(t, s, name, pushPull, start, limit, done))
		t.Logf("n=%d: %s: %d simulated seconds, %v of wall time, heap %d MiB", n, name, out[len(out)-1].seconds, time.Since(began).Round(time.Second), heapInUseMiB())
	}
	const prefix = "10.32.0.0/12"

	// A node joins: memberlist's join push/pull with the node it names,
	// then its space request and the donation.
	joiner := "joiner-a.cluster.local"
	phase("join (one donation)", false, 60, func() {
		s.add(t, joiner, prefix, n, 0)
		joinPushPull(s, joiner, names[0])
	}, func() string {
		if d := s.ringsEqual(); d != "" {
			return d
		}
		if !ownsSpace(s.nodes[joiner]) {
			return "the joiner owns no space"
		}
		return ""
	})

	// A node leaves and an operator runs `mesh rmpeer` on one node: it
	// tombstones the node's runs (one delta) and the heir of each claims
	// it (a delta each). Each epidemic misses a member now and then (about
	// one in twenty at any size, docs/ipam.md "Deltas"), and push/pull,
	// at memberlist's pace, brings it the change: so these phases run
	// with it, for up to two of its intervals.
	removalLimit := int(2*pushPullEvery(n).Seconds()) + 5
	gone := names[n/2]
	phase("leave, rmpeer on one node", true, removalLimit, func() {
		s.kill(gone)
		if _, err := s.nodes[names[0]].RemovePeer(gone); err != nil {
			t.Fatalf("rmpeer %s: %v", gone, err)
		}
	}, func() string {
		return cmpOr(s.ringsEqual(), ownedBy(s, gone))
	})

	// A node leaves and its Kubernetes Node object is deleted: every
	// node's watcher sees it at about the same time, and the nodes take
	// turns by name (daemon/kube.go, removalTurn): the first removes the
	// peer and broadcasts its whole state, the others' turns come
	// removalStagger (2 s) later or more, when the removal has reached
	// them, and find nothing to do.
	deleted := names[n/2+1]
	if n > *convDeleteMax {
		t.Logf("n=%d: Node deletion not simulated (above -ipam.conv.deletemax=%d)", n, *convDeleteMax)
	} else {
		phase("leave, Node deleted (nodes take turns)", true, removalLimit, func() {
			s.kill(deleted)
			live := slices.DeleteFunc(slices.Sorted(maps.Keys(s.nodes)), func(name string) bool { return name == deleted })
			for i, name := range live {
				if i == 1 {
					// Two simulated seconds of delivery before the
					// second node's turn.
					for range 20 {
						s.deliver(len(s.queue))
					}
				}
				if _, err := s.nodes[name].RemovePeerAuthoritative(deleted); err != nil {
					t.Fatalf("%s: remove %s: %v", name, deleted, err)
				}
			}
		}, func() string {
			return cmpOr(s.ringsEqual(), ownedBy(s, deleted))
		})
	}

	// A partition in two halves, a node joining on each side; once each
	// side agreed, the partition heals and push/pull (at memberlist's
	// pace) brings the halves together.
	for i, name := range names {
		if _, ok := s.nodes[name]; ok && i%2 == 1 {
			s.part[name] = 1
		}
	}
	sides := [2]string{"joiner-b.cluster.local", "joiner-c.cluster.local"}
	s.part[sides[1]] = 1
	phase("partition: a join on each side", false, 60, func() {
		for i, j := range sides {
			s.add(t, j, prefix, n, 0)
			joinPushPull(s, j, names[i]) // names[0] is on side 0, names[1] on side 1
		}
	}, func() string {
		for _, j := range sides {
			if !ownsSpace(s.nodes[j]) {
				return j + " owns no space"
			}
		}
		return ""
	})
	if n > *convHealMax {
		t.Logf("n=%d: partition heal not simulated (above -ipam.conv.healmax=%d)", n, *convHealMax)
	} else {
		// Heals take 3 to 6 push/pull intervals (docs/scale.md): room for 10.
		limit := max(600, int(10*pushPullEvery(n)/time.Second))
		phase("partition heal (push/pull)", true, limit, func() { clear(s.part) }, s.ringsEqual)
	}
	for _, p := range out {
		if p.name == "join (one donation)" && p.total == 0 {
			t.Errorf("n=%d: the join sent nothing: the measurement is broken", n)
		}
	}
	// The heap figure of the last phase counts the simulation only while
	// it is still referenced.
	runtime.KeepAlive(s)
	return out
}

// joinPushPull is memberlist's join: one push/pull between the joiner and
// the node it names, counted.
func joinPushPull(s *simNet, joiner, named string) {
	sa, sb := s.nodes[joiner].LocalState(), s.nodes[named].LocalState()
	s.count(joiner, named, sa)
	s.count(named, joiner, sb)
	_ = s.nodes[named].MergeRemoteState(sa)
	_ = s.nodes[joiner].MergeRemoteState(sb)
}

// converge runs simulated seconds (membership news, ticks, every message
// delivered, and with pushPull memberlist's push/pull at its pace) until
// done reports "" and nothing is queued; it returns the seconds, or -1
// after max.
func converge(t *testing.T, s *simNet, pushPull bool, max int, done func() string) int {
	t.Helper()
	for sec := 1; sec <= max; sec++ {
		s.clock.Advance(time.Second)
		s.updateMembers()
		for _, n := range slices.Sorted(maps.Keys(s.nodes)) {
			s.nodes[n].Tick()
		}
		for range 10 {
			s.deliver(len(s.queue))
		}
		if pushPull {
			// Every node starts one push/pull per interval.
			n := len(s.nodes)
			s.pushPull(int(math.Ceil(float64(n) / pushPullEvery(n).Seconds())))
		}
		// With push/pull, whole states answering digests stay queued
		// while the infos differ (after a removal every peer's
		// acknowledgements change: docs/ipam.md, "Dropping
		// tombstones"); the rings agreeing is what counts.
		if (len(s.queue) == 0 || pushPull && !slices.ContainsFunc(s.queue, func(m simMsg) bool { return m.data[0] != msgState })) && done() == "" {
			return sec
		}
	}
	return -1
}

// ownedBy describes the ranges a node still owns in any view, "" if none.
func ownedBy(s *simNet, name string) string {
	for _, v := range slices.Sorted(maps.Keys(s.nodes)) {
		for _, r := range s.nodes[v].Ranges() {
			if r.Owner == name {
				return fmt.Sprintf("%s still sees %v owned by %s", v, r.CIDR, name)
			}
		}
	}
	return ""
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
