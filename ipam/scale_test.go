package ipam

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The gossip cost of the IPAM state, measured with the deterministic
// simulation (docs/scale.md, "IPAM gossip bytes"). The sizes above 100 run
// only under MESH_SOAK=1 or with -ipam.scale.sizes.
var scaleSizes = flag.String("ipam.scale.sizes", "", "comma-separated peer counts for TestScaleGossipBytes (default 10,50,100; MESH_SOAK=1: up to 500)")

// scalePods is how many pods each simulated node runs (its Held list).
const scalePods = 10

// daemonPushPull is mesh/membership.go's PushPullInterval.
const daemonPushPull = 15 * time.Second

// pushPullEvery is how often a node of an n-node mesh starts a push/pull:
// memberlist stretches the interval past 32 nodes (its pushPullScale).
func pushPullEvery(n int) time.Duration {
	if n <= 32 {
		return daemonPushPull
	}
	return time.Duration(math.Ceil(math.Log2(float64(n))-math.Log2(32))+1) * daemonPushPull
}

// scaleRow is one line of the table.
type scaleRow struct {
	n            int
	state        int     // bytes of one whole state
	file         int     // bytes of one node's state file (written on every merge that teaches something)
	changeTotal  int     // bytes all transports carried for one donation
	changeDonor  int     // of which the donor sent
	changeMaxOth int     // most any other node sent
	changeMean   float64 // changeTotal / (n+1)
	restTicks    float64 // of which the ticks' messages (push/pull aside)
	restPerNode  float64 // bytes per node per second at rest, whole-state push/pull
	restDigest   float64 // the same with push/pull digests (every node holds one state)
	joinSent     int     // bytes the joiner sent
	joinRecv     int     // bytes the joiner received until it owned space
	joinRounds   int
	// The same join announced by a delta (the default once every
	// member reads them), on the same mesh afterwards.
	delta deltaJoin
}

// deltaJoin is what a join costs when the donor announces it by a delta.
type deltaJoin struct {
	total    int     // bytes all transports carried
	donor    int     // of which the donor sent (the whole state to the joiner, its deltas)
	maxOther int     // most any other node sent
	maxRecv  int     // most any node but the joiner received
	mean     float64 // total / nodes
	deltaLen int     // bytes of the delta
	deltas   int     // delta messages sent in all
	missed   int     // nodes the epidemic missed (push/pull brings them the change)
}

func TestScaleGossipBytes(t *testing.T) {
	sizes := []int{10, 50, 100}
	if os.Getenv("MESH_SOAK") != "" {
		sizes = []int{10, 50, 100, 200, 500}
	}
	if *scaleSizes != "" {
		sizes = nil
		for _, f := range strings.Split(*scaleSizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 2 {
				t.Fatalf("-ipam.scale.sizes: bad size %q", f)
			}
			sizes = append(sizes, n)
		}
	}
	var rows []scaleRow
	for _, n := range sizes {
		start := time.Now()
		r := measureScale(t, n)
		t.Logf("n=%d measured in %v", n, time.Since(start).Round(time.Millisecond))
		rows = append(rows, r)
		// What the table says must also hold: one state is what a peer
		// costs times the peers, and one ring change sends it to everyone
		// (this is the wall docs/scale.md describes; a delta design would
		// change these bounds).
		if per := r.state / n; per < 20 || per > 200 {
			t.Errorf("n=%d: %d bytes per peer in the state, want 20..200", n, per)
		}
		if r.restTicks != 0 {
			t.Errorf("n=%d: the ticks of a mesh at rest sent %.1f bytes per node per second, want 0 (only push/pull carries heartbeats)", n, r.restTicks)
		}
		// With digests, push/pull at rest costs two digests per
		// interval whatever N: no more than two digests of 64 bytes
		// every 15 s (memberlist only stretches the interval).
		if r.restDigest > 2*64/15.0 {
			t.Errorf("n=%d: push/pull digests at rest cost %.2f bytes per node per second", n, r.restDigest)
		}
		if r.joinRecv > 3*r.state+r.state/10 {
			t.Errorf("n=%d: the joiner received %d bytes, more than 3 whole states of %d", n, r.joinRecv, r.state)
		}
		if r.changeDonor < (n-1)*r.state*9/10 {
			t.Errorf("n=%d: the donor sent %d bytes, less than the whole state (%d) to each of %d members", n, r.changeDonor, r.state, n-1)
		}
		// With deltas: the donor sends one whole state (to the joiner)
		// and deltaFanout deltas; every other node at most its push/pull
		// answer to the joiner and deltaFanout deltas; no node but the
		// joiner receives more than a few deltas. None of it grows with
		// the whole state.
		d, fan := r.delta, deltaFanout(n+1)
		if d.deltas == 0 || d.deltaLen > 1024 {
			t.Errorf("n=%d: %d deltas of up to %d bytes, want some, each under 1 KiB", n, d.deltas, d.deltaLen)
		}
		if d.donor > r.state*11/10+fan*d.deltaLen {
			t.Errorf("n=%d: with deltas the donor sent %d bytes, more than one whole state (%d) and %d deltas of %d", n, d.donor, r.state, fan, d.deltaLen)
		}
		if d.maxOther > r.state*11/10+fan*d.deltaLen {
			t.Errorf("n=%d: with deltas a node sent %d bytes, more than one whole state (%d) and %d deltas of %d", n, d.maxOther, r.state, fan, d.deltaLen)
		}
		if d.missed > n/10 {
			t.Errorf("n=%d: the epidemic missed %d nodes, want at most a tenth", n, d.missed)
		}
	}
	// Sublinear: from the smallest to the largest mesh measured, the mean
	// bytes per node per ring change with deltas grow far slower than the
	// mesh (they grow with log N: the fanout), while with whole states
	// they grow with N.
	if len(rows) >= 2 {
		lo, hi := rows[0], rows[len(rows)-1]
		growth, nGrowth := hi.delta.mean/lo.delta.mean, float64(hi.n)/float64(lo.n)
		if growth > nGrowth/2 {
			t.Errorf("mean bytes per node per change with deltas grew %.1fx from %d to %d nodes (%.0f to %.0f), want under half of the %.0fx growth of the mesh", growth, lo.n, hi.n, lo.delta.mean, hi.delta.mean, nGrowth)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%6s %10s %10s %14s %12s %12s %12s %12s %14s %14s %12s %12s %7s\n", "N", "state B", "file B", "change total B", "donor B", "max other B", "mean/node B", "ticks B/n/s", "rest B/node/s", "digests B/n/s", "join recv B", "join sent B", "rounds")
	for _, r := range rows {
		fmt.Fprintf(&b, "%6d %10d %10d %14d %12d %12d %12.0f %12.1f %14.1f %14.2f %12d %12d %7d\n", r.n, r.state, r.file, r.changeTotal, r.changeDonor, r.changeMaxOth, r.changeMean, r.restTicks, r.restPerNode, r.restDigest, r.joinRecv, r.joinSent, r.joinRounds)
	}
	if len(rows) >= 2 {
		// Least squares through the origin of bytes per peer: state ~ a*N,
		// mean per node per change ~ a*N, donor ~ a*N^2.
		fit := func(f func(scaleRow) float64, pow float64) float64 {
			var num, den float64
			for _, r := range rows {
				x := math.Pow(float64(r.n), pow)
				num += x * f(r)
				den += x * x
			}
			return num / den
		}
		aState := fit(func(r scaleRow) float64 { return float64(r.state) }, 1)
		aMean := fit(func(r scaleRow) float64 { return r.changeMean }, 1)
		aDonor := fit(func(r scaleRow) float64 { return float64(r.changeDonor) }, 2)
		aTotal := fit(func(r scaleRow) float64 { return float64(r.changeTotal) }, 2)
		fmt.Fprintf(&b, "fit: state ~ %.1f*N B; per node per change (mean) ~ %.1f*N B; donor ~ %.1f*N^2 B; total per change ~ %.1f*N^2 B; rest = 2*state/pushPullEvery(N)\n", aState, aMean, aDonor, aTotal)
		const x = 5000
		if !slices.ContainsFunc(rows, func(r scaleRow) bool { return r.n >= x }) {
			fmt.Fprintf(&b, "EXTRAPOLATION to N=%d (not measured): state %.0f KB; donor %.0f MB; total per change %.0f MB; mean per node per change %.0f KB; rest %.0f B/node/s (push/pull every %v)\n",
				x, aState*x/1e3, aDonor*x*x/1e6, aTotal*x*x/1e6, aMean*x/1e3, 2*aState*x/pushPullEvery(x).Seconds(), pushPullEvery(x))
		}
	}
	fmt.Fprintf(&b, "the same join announced by a delta (on the mesh of N+1 the first join left):\n%6s %10s %8s %14s %12s %12s %12s %12s %8s\n", "N", "delta B", "deltas", "change total B", "donor B", "max other B", "max recv B", "mean/node B", "missed")
	for _, r := range rows {
		d := r.delta
		fmt.Fprintf(&b, "%6d %10d %8d %14d %12d %12d %12d %12.0f %8d\n", r.n, d.deltaLen, d.deltas, d.total, d.donor, d.maxOther, d.maxRecv, d.mean, d.missed)
	}
	t.Log(b.String())
}

// measureScale builds a settled n-node mesh with scalePods pods per node,
// every node knowing every Held list, then measures a join (one donation),
// the state size, and the traffic at rest.
func measureScale(t *testing.T, n int) scaleRow {
	t.Helper()
	s, names := settledScaleSim(t, n)
	row := scaleRow{n: n, state: len(s.nodes[names[0]].LocalState()), file: len(s.store.files[s.nodes[names[0]].cfg.StateFile])}

	// At rest: the messages the ticks send (none expected with reclaim
	// off), plus the push/pull memberlist runs: each node starts one every
	// pushPullEvery(n) and so, on average, also answers one, sending a
	// whole state both times.
	s.sent, s.recv = map[string]int{}, map[string]int{}
	const restRounds = 30
	for range restRounds {
		quietRound(s)
	}
	ticks := sum(s.sent)
	var stateSum, digestSum int
	var first []byte
	for _, name := range names {
		stateSum += len(s.nodes[name].LocalState())
		dg := s.nodes[name].PushPullState(false)
		if !isDigest(dg) {
			t.Fatalf("n=%d: %s's push/pull at rest is no digest", n, name)
		}
		if first == nil {
			first = dg[len(dg)-digestLen:]
		} else if !bytes.Equal(first, dg[len(dg)-digestLen:]) {
			// A push/pull with it would send whole states both ways.
			t.Fatalf("n=%d: %s holds another state than %s at rest", n, name, names[0])
		}
		digestSum += len(dg)
	}
	row.restTicks = float64(ticks) / float64(n*restRounds)
	row.restPerNode = row.restTicks + 2*float64(stateSum)/float64(n)/pushPullEvery(n).Seconds()
	row.restDigest = row.restTicks + 2*float64(digestSum)/float64(n)/pushPullEvery(n).Seconds()

	// A new node joins: memberlist's join is one push/pull with the node
	// it names; then ticks and messages run until every ring agrees and
	// the joiner owns space. Push/pull is left out of this window (it is
	// the rest figure), so the bytes are those of the ring change. First
	// announced by whole states (as while a member of the previous
	// release is in the mesh), then, on the same mesh, by a delta.
	s.whole = true
	s.sent, s.recv = map[string]int{}, map[string]int{}
	joiner := "joiner.cluster.local"
	j := s.add(t, joiner, "10.32.0.0/12", n, 0)
	sa, sb := j.LocalState(), s.nodes[names[0]].LocalState()
	s.sent[joiner] += len(sa)
	s.recv[names[0]] += len(sa)
	s.sent[names[0]] += len(sb)
	s.recv[joiner] += len(sb)
	_ = s.nodes[names[0]].MergeRemoteState(sa)
	_ = j.MergeRemoteState(sb)
	for row.joinRounds = 1; ; row.joinRounds++ {
		if row.joinRounds > 60 {
			t.Fatalf("n=%d: joiner owns no space or rings differ after 60 rounds: %s", n, s.ringsEqual())
		}
		quietRound(s)
		if len(s.queue) == 0 && s.ringsEqual() == "" && ownsSpace(j) {
			break
		}
	}
	row.joinRecv = s.recv[joiner]
	row.joinSent = s.sent[joiner]
	row.changeTotal = sum(s.sent)
	var donor string
	for _, name := range slices.Sorted(maps.Keys(s.sent)) {
		if name != joiner && s.sent[name] > s.sent[donor] {
			donor = name
		}
	}
	row.changeDonor = s.sent[donor]
	for name, b := range s.sent {
		if name != donor && b > row.changeMaxOth {
			row.changeMaxOth = b
		}
	}
	row.changeMean = float64(row.changeTotal) / float64(n+1)
	s.sent, s.recv = nil, nil
	row.delta = measureDeltaJoin(t, s, names[1])
	return row
}

// measureDeltaJoin has a second node join the settled mesh s through
// via, with deltas on, and counts what every transport carried until
// the joiner owned space and nothing was queued; then it runs push/pull
// rounds until every ring agrees (a node the epidemic missed learns the
// change so) and fails if they do not.
func measureDeltaJoin(t *testing.T, s *simNet, via string) deltaJoin {
	t.Helper()
	s.whole = false
	quiet(t, s, len(s.nodes))
	n := len(s.nodes) + 1
	s.sent, s.recv = map[string]int{}, map[string]int{}
	var deltaMsgs []int
	s.onSend = func(from, to string, msg []byte) {
		if msg[0] == msgDelta {
			deltaMsgs = append(deltaMsgs, len(msg))
		}
	}
	defer func() { s.onSend = nil }()
	joiner := "joiner2.cluster.local"
	j := s.add(t, joiner, "10.32.0.0/12", n, 0)
	sa, sb := j.LocalState(), s.nodes[via].LocalState()
	s.sent[joiner] += len(sa)
	s.recv[via] += len(sa)
	s.sent[via] += len(sb)
	s.recv[joiner] += len(sb)
	_ = s.nodes[via].MergeRemoteState(sa)
	_ = j.MergeRemoteState(sb)
	for rounds := 1; ; rounds++ {
		if rounds > 60 {
			t.Fatalf("n=%d: the second joiner owns no space after 60 rounds", n)
		}
		quietRound(s)
		if len(s.queue) == 0 && ownsSpace(j) {
			break
		}
	}
	var d deltaJoin
	d.total = sum(s.sent)
	d.deltas = len(deltaMsgs)
	for _, l := range deltaMsgs {
		d.deltaLen = max(d.deltaLen, l)
	}
	var donor string
	for _, name := range slices.Sorted(maps.Keys(s.sent)) {
		if name != joiner && name != via && s.sent[name] > s.sent[donor] {
			donor = name
		}
	}
	d.donor = s.sent[donor]
	for name, b := range s.sent {
		if name != donor && name != joiner && b > d.maxOther {
			d.maxOther = b
		}
	}
	for name, b := range s.recv {
		if name != joiner && b > d.maxRecv {
			d.maxRecv = b
		}
	}
	d.mean = float64(d.total) / float64(n)
	ref := s.nodes[donor]
	ref.mu.Lock()
	want := ref.st.ring.clone()
	ref.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(s.nodes)) {
		a := s.nodes[name]
		a.mu.Lock()
		if !a.st.ring.equal(want) {
			d.missed++
		}
		a.mu.Unlock()
	}
	s.sent, s.recv = nil, nil
	if msg := s.trySettle(0); msg != "" {
		t.Fatalf("n=%d: rings differ after the delta join and push/pull: %s", n, msg)
	}
	return d
}

// settledScaleSim is a settled n-node mesh with scalePods pods per node,
// every node knowing every Held list, sending nothing.
func settledScaleSim(t *testing.T, n int) (*simNet, []string) {
	t.Helper()
	return settledScaleSimReclaim(t, n, 0)
}

// settledScaleSimReclaim is settledScaleSim with automatic reclaim after
// reclaim (0: off).
func settledScaleSimReclaim(t *testing.T, n int, reclaim time.Duration) (*simNet, []string) {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d.cluster.local", i)
	}
	s := newSimNet(1)
	s.store.noContents = true
	s.settleNew(t, "10.32.0.0/12", reclaim, names...)
	type pod struct{ node, id string }
	var pending []pod
	for _, name := range names {
		for j := range scalePods {
			pending = append(pending, pod{name, fmt.Sprintf("%s-pod%d", name, j)})
		}
	}
	// With reclaim on, a node allocates only addresses a lease quorum has
	// echoed: those wait for the next rounds.
	for round := 0; len(pending) > 0; round++ {
		var err error
		pending = slices.DeleteFunc(pending, func(p pod) bool {
			e := simAllocate(s.nodes[p.node], p.id)
			if e != nil {
				err = e
			}
			return e == nil
		})
		if len(pending) == 0 {
			break
		}
		if reclaim == 0 || round >= 30 {
			t.Fatalf("n=%d: %d allocations failed, e.g.: %v", n, len(pending), err)
		}
		quietRound(s)
	}
	s.round() // heartbeat: every node publishes its Held
	spreadAll(s)
	quiet(t, s, n)
	s.shareHeld()
	return s, names
}

// shareHeld makes the nodes' copies of equal Held lists one slice, as a
// process of one Allocator has one copy: N replicas of N peers' lists
// would otherwise be most of a large simulation's memory. Sharing is safe
// because a Held list, once in a state, is never written in place (a new
// info gets a new list); the shared slices have no spare capacity, so an
// append copies.
func (s *simNet) shareHeld() {
	lists := map[string][]uint64{}
	var key []byte
	for _, n := range s.nodes {
		n.mu.Lock()
		for name, p := range n.st.peers {
			if len(p.Held) == 0 {
				continue
			}
			key = key[:0]
			for _, off := range p.Held {
				key = binary.LittleEndian.AppendUint64(key, off)
			}
			shared, ok := lists[string(key)]
			if !ok {
				shared = slices.Clip(slices.Clone(p.Held))
				lists[string(key)] = shared
			}
			p.Held = shared
			n.st.peers[name] = p
		}
		n.mu.Unlock()
	}
}

// quietRound is one second of the daemon's life without push/pull (which
// measureScale accounts for apart): membership news, ticks, and every
// message delivered, including the answers they cause.
func quietRound(s *simNet) {
	s.clock.Advance(time.Second)
	s.updateMembers()
	for _, n := range slices.Sorted(maps.Keys(s.nodes)) {
		s.nodes[n].Tick()
	}
	for range 10 {
		s.deliver(len(s.queue))
	}
}

// quiet runs rounds until the mesh sends nothing at all.
func quiet(t *testing.T, s *simNet, n int) {
	t.Helper()
	for range 20 {
		quietRound(s)
		if len(s.queue) == 0 {
			return
		}
	}
	t.Fatalf("n=%d: the mesh still sends after 20 rounds (%d queued)", n, len(s.queue))
}

// spreadAll makes every node know every other's current info, as enough
// push/pull would: the first node merges everyone's state, then everyone
// merges the first node's.
func spreadAll(s *simNet) {
	names := slices.Sorted(maps.Keys(s.nodes))
	hub := s.nodes[names[0]]
	for _, name := range names[1:] {
		_ = hub.MergeRemoteState(s.nodes[name].LocalState())
	}
	st := hub.LocalState()
	for _, name := range names[1:] {
		_ = s.nodes[name].MergeRemoteState(st)
	}
}

func ownsSpace(n *simNode) bool {
	for _, r := range n.Ranges() {
		if r.Owner == n.cfg.Self {
			return true
		}
	}
	return false
}

func sum(m map[string]int) int {
	t := 0
	for _, v := range m {
		t += v
	}
	return t
}
