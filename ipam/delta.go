package ipam

import (
	"cmp"
	"errors"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
)

// Ring-change deltas (docs/ipam.md, "Deltas"). A peer that writes a ring
// change (a donation, a removal, a reclaim's tombstones and claims) used
// to send its whole state to every member: N whole states, each growing
// with N, for one change. Once every member reads them (Config.Deltas),
// it sends a delta instead: a state holding only the runs it changed,
// each extended by the run that follows it, and the infos of the peers
// those runs name or whose space they were, to a few members chosen at
// random, and every member
// that learns something from a delta passes it on the same way (a push
// epidemic). Push/pull keeps exchanging whole states, so a member the
// epidemic missed still learns the change.
//
// A delta is a state like any other: at every address it does not carry
// it holds the unseeded entry (version 0), which every join ignores, so
// merging a delta is the same join as merging a whole state. What it
// lacks is causal closure: a whole state tells everything its writer
// knew. The heir rule needs only part of it (that whoever learns who owns
// an address also learns the writer's entry of the address after it,
// where the writer's claim would be): the run that follows each changed
// run carries it. Deltas are never counted as echoes, nor as the state
// exchanges that end a restart's recovery (I6): those stay whole.

// msgDelta carries a delta: the encoded partial state, its sender field
// being the peer that wrote the change (forwarders pass the bytes on
// unchanged).
const msgDelta byte = 8

const (
	// maxDeltaForward is the largest delta a peer passes on; a larger one
	// is merged but not forwarded, so that a peer holding the key cannot
	// make the mesh multiply a big message. An honest delta names a few
	// runs and peers: well under a kilobyte, a few KiB for the removal of
	// a peer with thousands of pods.
	maxDeltaForward = 64 << 10
	// deltaForwardsPerTick bounds the deltas a peer passes on between
	// two ticks (a second in the daemon); further ones are merged only.
	// Honest ring changes are rare (joins, donations, removals), and a
	// delta not passed on still reaches everyone by push/pull.
	deltaForwardsPerTick = 32
	// deltaFanoutExtra is added to ln(members) for the number of peers
	// each sender passes a delta to: a push epidemic with fanout ln(n)+c
	// reaches every one of n peers with probability about exp(-exp(-c)),
	// 95% for c = 3, and push/pull covers the rest.
	deltaFanoutExtra = 3
)

// deltaFanout is how many peers a delta goes to from each sender, for n
// live members other than the sender.
func deltaFanout(n int) int {
	if n <= 0 {
		return 0
	}
	return min(n, int(math.Ceil(math.Log(float64(n))))+deltaFanoutExtra)
}

// sendsDeltasLocked says whether this peer announces its ring changes by
// deltas: every member reads them, and this peer is not recovering (I6: a
// recovering peer sends no state of its own).
func (a *Allocator) sendsDeltasLocked() bool {
	return a.cfg.Deltas != nil && !a.recovering && a.cfg.Deltas()
}

// announceLocked tells the mesh about a ring change this peer just wrote,
// before being the ring before it: a delta when every member reads them,
// else the whole state to everyone. The delta carries the infos of this
// peer, of every peer its runs name, of the peers named, and of the peers
// whose space the changed runs were in before.
func (a *Allocator) announceLocked(before ring, names ...string) {
	if !a.sendsDeltasLocked() || before.size != a.st.ring.size {
		a.broadcastStateLocked()
		return
	}
	d := deltaRing(before, a.st.ring)
	if len(d.segs) == 1 && d.segs[0].e == (entry{}) {
		return // nothing changed
	}
	part := state{seed: a.st.seed, ring: d, peers: map[string]peerInfo{}}
	name := func(n string) {
		if p, ok := a.st.peers[n]; ok && n != "" {
			part.peers[n] = p
		}
	}
	name(a.cfg.Self)
	for _, n := range names {
		name(n)
	}
	for i, s := range d.segs {
		if s.e == (entry{}) {
			continue
		}
		name(s.e.Owner)
		name(s.e.Dead)
		// And the peers whose space the run was: their release or
		// removal, which a receiver that missed the change before this
		// one needs to take it (the release rule, validate.go). A
		// claim, say, whose tombstone's delta is still on its way.
		for k, end := before.find(s.start), d.end(i); k < len(before.segs) && before.segs[k].start < end; k++ {
			name(before.segs[k].e.Owner)
			name(before.segs[k].e.Dead)
		}
	}
	msg := append([]byte{msgDelta}, encodeStateAs(a.cfg.Range, a.cfg.Self, part, a.sendSignedLocked())...)
	n := a.spreadLocked(msg, a.cfg.Self)
	a.log.Debug(logDeltaSent, "bytes", len(msg), "peers", n)
}

// The debug lines a delta's writer and its receivers log (tests look for
// them on real daemons).
const (
	logDeltaSent   = "announced a ring change by a delta"
	logDeltaMerged = "learnt a ring change from a delta"
)

// spreadLocked queues msg, a delta, for deltaFanout(n) live members chosen
// at random, none of them in except, and says how many. The choice is a
// function of the message and this peer's name, so that a simulation
// replays exactly, and different for every forwarder.
func (a *Allocator) spreadLocked(msg []byte, except ...string) int {
	var cand []string
	for name, ok := range a.members {
		if ok && name != a.cfg.Self && !slices.Contains(except, name) {
			if p, known := a.st.peers[name]; !known || !p.Removed {
				cand = append(cand, name)
			}
		}
	}
	slices.Sort(cand)
	h := fnv.New64a()
	h.Write([]byte(a.cfg.Self))
	h.Write(msg)
	rng := rand.New(rand.NewPCG(h.Sum64(), h.Sum64()^0x9e3779b97f4a7c15))
	rng.Shuffle(len(cand), func(i, j int) { cand[i], cand[j] = cand[j], cand[i] })
	n := deltaFanout(len(cand))
	for _, to := range cand[:n] {
		a.outbox = append(a.outbox, outMsg{to: to, msg: msg})
	}
	return n
}

// mergeDeltaLocked merges a delta and passes it on when it taught this
// peer something about the ring. A delta of another seed (or one this
// peer, unseeded, cannot place) is not merged: it holds only part of a
// ring, and a ring of a larger seed replaces ours whole; the whole state
// arrives by push/pull.
func (a *Allocator) mergeDeltaLocked(from string, w wireState, msg []byte) error {
	if !a.placesDeltaLocked(w) {
		a.log.Debug("delta of another seed not merged: waiting for the whole state", "from", from, "writer", w.sender)
		return nil
	}
	w.delta = true
	before := a.st.ring
	if err := a.mergeLocked(w); errors.Is(err, errDeltaBehind) {
		a.log.Debug("delta not merged: it moves space whose earlier change this peer has not seen; waiting for the whole state", "from", from, "writer", w.sender)
		return nil
	} else if err != nil {
		return err
	}
	if a.st.ring.equal(before) {
		return nil
	}
	a.log.Debug(logDeltaMerged, "writer", w.sender, "from", from)
	if len(msg) > maxDeltaForward || a.deltaForwards >= deltaForwardsPerTick || !a.sendsDeltasLocked() {
		return nil
	}
	a.deltaForwards++
	a.spreadLocked(msg, from, w.sender)
	return nil
}

// placesDeltaLocked says whether this peer can merge the delta w: it is of
// this peer's seed, which is set.
func (a *Allocator) placesDeltaLocked(w wireState) bool {
	return !w.st.seed.isZero() && w.st.seed == a.st.seed
}

// knowsDelta says whether merging the delta w would change nothing: we can
// place it, our ring holds at least its entry wherever it carries one,
// and every info it carries is one we hold or older. Merged state only
// grows, so the answer stays true once the lock is released.
func (a *Allocator) knowsDelta(w wireState) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.placesDeltaLocked(w) || w.st.ring.size != a.st.ring.size {
		return false // another range is refused (and counted) by the merge
	}
	for name, p := range w.st.peers {
		if cur, ok := a.st.peers[name]; !ok || comparePeerInfo(p, cur) > 0 {
			return false
		}
	}
	r := w.st.ring
	for i, s := range r.segs {
		if s.e == (entry{}) {
			continue
		}
		end := r.end(i)
		for k := a.st.ring.find(s.start); k < len(a.st.ring.segs) && a.st.ring.segs[k].start < end; k++ {
			if ours := a.st.ring.segs[k].e; joinEntry(ours, s.e) != ours {
				return false
			}
		}
	}
	return true
}

// deltaRing is the part of after that differs from before, each changed
// run extended by the whole run of after that follows it (cyclically: the
// heir of a run is the owner of the address below it), and every other
// address at the unseeded entry. Both rings have one size.
func deltaRing(before, after ring) ring {
	var keep []span
	add := func(sp span) {
		if n := len(keep); n > 0 && keep[n-1].end >= sp.start {
			keep[n-1].end = max(keep[n-1].end, sp.end)
			return
		}
		keep = append(keep, sp)
	}
	var changed []span
	i, j := 0, 0
	for pos := uint64(0); pos < after.size; {
		eb, ea := before.end(i), after.end(j)
		next := min(eb, ea)
		if before.segs[i].e != after.segs[j].e {
			if n := len(changed); n > 0 && changed[n-1].end == pos {
				changed[n-1].end = next
			} else {
				changed = append(changed, span{pos, next})
			}
		}
		pos = next
		if eb == pos {
			i++
		}
		if ea == pos {
			j++
		}
	}
	all := make([]span, 0, 2*len(changed))
	for _, c := range changed {
		k := after.find(c.end % after.size)
		all = append(all, c, span{after.segs[k].start, after.end(k)})
	}
	slices.SortFunc(all, func(x, y span) int { return cmp.Compare(x.start, y.start) })
	for _, sp := range all {
		add(sp)
	}
	out := ring{size: after.size}
	for _, sp := range keep {
		if sp.start > 0 && len(out.segs) == 0 {
			out.segs = appendSeg(out.segs, 0, entry{})
		}
		for k := after.find(sp.start); k < len(after.segs) && after.segs[k].start < sp.end; k++ {
			out.segs = appendSeg(out.segs, max(sp.start, after.segs[k].start), after.segs[k].e)
		}
		if sp.end < after.size {
			out.segs = appendSeg(out.segs, sp.end, entry{})
		}
	}
	if len(out.segs) == 0 {
		out.segs = []seg{{start: 0}}
	}
	return out
}
