package ipam

import (
	"cmp"
	"encoding/binary"
	"slices"
	"time"
)

// Vouched reclaims (docs/ipam.md, "Vouched reclaims").
//
// With automatic reclaim on, a silent peer's space moves without its word,
// so the release rule alone cannot tell a reclaim from a forged transfer.
// Each voter therefore says, in its own signed info, which peers it found
// silent for ReclaimAfter and which runs they owned in its ring then (a
// vouch). A peer tombstones a silent peer's runs only once a reclaim
// quorum vouches for them, and a receiver takes a move of the space such
// a peer still lists only when a majority of the voters vouch for it. A
// holder of the mesh key alone cannot make a majority say so of a live
// peer.
//
// A vouch is a commitment, not a report: a voter keeps it while the peer
// is silent, and after the peer is heard again while any listing of the
// runs is stale in its ring (the reclaim not merged everywhere), then for
// vouchKeepTicks more (ownVouchesLocked). Withdrawing it when the peer
// comes back would refuse, everywhere, a reclaim written just before (the
// findings in docs/ipam.md). So a vouch that a quorum
// once gave lets the reclaim of those runs happen later too, which is
// what a reclaim written then would have done: the quorum echoes that
// make a reclaim safe do not depend on when it is written.

// vouch is a voter's word that peer Name was silent to it for ReclaimAfter
// while it owned Runs (sorted, disjoint, not adjacent) in the voter's ring
// as a plain owner.
type vouch struct {
	Name string
	Runs []span
}

func compareVouch(a, b vouch) int {
	if c := cmp.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return slices.CompareFunc(a.Runs, b.Runs, compareSpan)
}

const (
	// maxVouches bounds the peers an info vouches for (more is refused,
	// as held): a voter that already vouches for so many adds no more,
	// and the reclaim of the next silent peer waits for an operator's
	// rmpeer (status names it).
	maxVouches = 64
	// maxVouchRuns bounds the runs of one vouch (more is refused, as
	// held); a voter keeps the first.
	maxVouchRuns = 64
	// vouchKeepTicks is how long a voter keeps a vouch after nothing
	// needs it any more here: the releases that made it useless reach
	// the others by push/pull, and a state that carries this voter's
	// newer info without them would be refused meanwhile.
	vouchKeepTicks = 600
)

// appendVouches writes vs: a count, then per vouch the name (as name
// writes it: an index on the wire, the bytes under a signature) and its
// runs as appendOwned writes spans.
func appendVouches(b []byte, vs []vouch, name func([]byte, string) []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(vs)))
	for _, v := range vs {
		b = name(b, v.Name)
		b = appendOwned(b, v.Runs)
	}
	return b
}

// vouches reads what appendVouches wrote, refusing unsorted or duplicate
// names and vouches without runs; the runs are read as owned spans (one
// form per list).
func (d *decoder) vouches(name func() string, size uint64) []vouch {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	out := make([]vouch, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		v := vouch{Name: name()}
		v.Runs = d.owned(size)
		switch {
		case d.err != nil:
		case v.Name == "":
			d.fail("vouch without a name")
		case i > 0 && v.Name <= out[len(out)-1].Name:
			d.fail("vouches not sorted by name")
		case len(v.Runs) == 0:
			d.fail("vouch for %q without runs", v.Name)
		default:
			out = append(out, v)
		}
	}
	return out
}

// silentLocked says whether this peer has not heard from name for
// ReclaimAfter (its info has not grown here), and for how long. A peer not
// heard from since this one started is not silent: after a restart, each
// must first be watched for a whole window.
func (a *Allocator) silentLocked(name string, now time.Time) (time.Duration, bool) {
	seen, ok := a.liveness.lastSeen[name]
	if !ok {
		return 0, false
	}
	d := now.Sub(seen.at)
	return d, d >= a.cfg.ReclaimAfter
}

// listsAnyRun says whether the sorted, disjoint spans owned meet one of
// runs.
func listsAnyRun(owned, runs []span) bool {
	for _, r := range runs {
		if overlaps(owned, r) {
			return true
		}
	}
	return false
}

// unionSpans returns the addresses of x and y as maximal spans, sorted:
// the runs a voter keeps vouching for when it vouches for the same peer
// again (the peer came back, got other space and fell silent again).
func unionSpans(x, y []span) []span {
	all := slices.Concat(x, y)
	slices.SortFunc(all, compareSpan)
	var out []span
	for _, s := range all {
		if n := len(out); n > 0 && s.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// coversSpan says whether the vouches vs, together, cover s: whichever
// silent peer owned it in the voter's ring. A reclaim moves, besides the
// silent peer's space, what it gave away unseen by the reclaim's writer
// (the tombstone's version jump beats such transfers), and that space is
// listed by its receiver, which may well be alive.
func coversSpan(vs []vouch, s span) bool {
	var runs []span
	for _, v := range vs {
		for _, r := range v.Runs {
			if r.start < s.end && r.end > s.start {
				runs = append(runs, r)
			}
		}
	}
	pos := s.start
	for _, r := range unionSpans(runs, nil) {
		if r.start > pos {
			return false
		}
		pos = max(pos, r.end)
	}
	return pos >= s.end
}

// vouchesLocked counts the voters (not removed, not joining, other than
// x, the peer whose space s moves) whose newest info, as the merge of w
// will leave it (w nil: this peer's table), vouches that the owner of s in
// their ring fell silent (coversSpan). It also returns the number of
// voters, x included.
func (a *Allocator) vouchesLocked(w *wireState, x string, s span) (n, voters int) {
	count := func(name string, p peerInfo) {
		if p.Removed {
			return
		}
		voters++
		if name == x || p.Joining || !p.ListsVouches {
			return
		}
		if coversSpan(p.Vouches, s) {
			n++
		}
	}
	for name := range a.st.peers {
		if w != nil {
			count(name, a.newestInfoLocked(w, name))
		} else {
			count(name, a.st.peers[name])
		}
	}
	if w != nil {
		for name, p := range w.st.peers {
			if _, ok := a.st.peers[name]; !ok {
				count(name, p)
			}
		}
	}
	return n, voters
}

// vouchedMoveLocked says whether a move of x's run s, brought by w, is a
// reclaim a majority of the voters vouch for: the release rule's exception for peers that run a lease pool. A
// strict majority, one voter less than the reclaim quorum the writer
// needed, so that a receiver that counts one voter more or less than the
// writer still takes an honest reclaim.
func (a *Allocator) vouchedMoveLocked(w *wireState, x string, s span) bool {
	n, voters := a.vouchesLocked(w, x, s)
	return n >= voters/2+1
}

// ownVouchesLocked is the Vouches list of this peer's next info. It keeps
// every vouch of me, its current info, while it may be needed: while the
// vouched peer is silent here (and not removed), or while
// some peer not removed lists part of the runs that it does not own in
// this peer's ring (staleListingsLocked: the silent peer once the reclaim
// is merged here, and the receiver of what it gave away unseen by the
// reclaim's writer, which the reclaim moves too and which, alive, lists
// it until it merges the reclaim). Until then a receiver that holds such
// a peer's entry needs the vouches to take the reclaim, the peer itself
// included. Once neither holds, it keeps the vouch vouchKeepTicks more:
// a reclaim written just before the peer was heard again may not have
// reached this peer yet, and the releases that made the vouch useless
// must reach the others first. And with automatic
// reclaim on it vouches for each peer that runs a lease pool, owns space
// and has been silent here for ReclaimAfter (whether or not its info lists
// its space or says it reads vouches yet), with its plain runs in
// this peer's ring (merged into an earlier vouch for it). Not while
// recovering (I6): this peer's ring may lack what a majority knows.
func (a *Allocator) ownVouchesLocked(me peerInfo) []vouch {
	out := make([]vouch, 0, len(me.Vouches))
	if len(me.Vouches) == 0 {
		clear(a.vouchIdle)
	}
	now := a.cfg.Now()
	// Every merge publishes: the walk over every listing is done only
	// when a vouch is not kept by its peer's silence alone, and once.
	var stale []span
	staleDone := false
	for _, v := range me.Vouches {
		p, ok := a.st.peers[v.Name]
		_, silent := a.silentLocked(v.Name, now)
		kept := ok && !p.Removed && silent
		if !kept && !staleDone {
			stale, staleDone = a.staleListingsLocked(), true
		}
		if kept || listsAnyRun(stale, v.Runs) {
			delete(a.vouchIdle, v.Name)
			out = append(out, v)
			continue
		}
		if a.vouchIdle == nil {
			a.vouchIdle = map[string]uint64{}
		}
		since, ok := a.vouchIdle[v.Name]
		if !ok {
			a.vouchIdle[v.Name], since = a.tick, a.tick
		}
		if a.tick-since < vouchKeepTicks {
			out = append(out, v)
			continue
		}
		delete(a.vouchIdle, v.Name)
	}
	if a.cfg.ReclaimAfter <= 0 || a.recovering || a.st.seed.isZero() {
		return out
	}
	for _, name := range sortedNames(a.st.peers) {
		p := a.st.peers[name]
		// Whether or not name's info lists its space or says it reads
		// vouches yet: it may have turned both on while cut off
		// (reclaimableLocked).
		if name == a.cfg.Self || p.Removed || !p.Leased {
			continue
		}
		if _, silent := a.silentLocked(name, now); !silent {
			continue
		}
		cur := a.st.ring.owned(name)
		if len(cur) == 0 {
			continue
		}
		i, found := slices.BinarySearchFunc(out, name, func(v vouch, n string) int { return cmp.Compare(v.Name, n) })
		switch {
		case found:
			out[i].Runs = unionSpans(out[i].Runs, cur)
		case len(out) < maxVouches:
			out = slices.Insert(out, i, vouch{Name: name, Runs: cur})
		}
	}
	for i := range out {
		if len(out[i].Runs) > maxVouchRuns {
			out[i].Runs = out[i].Runs[:maxVouchRuns]
		}
	}
	return out
}

// listsVouchesLocked says whether this peer's next info lists its vouches
// (listSwitchLocked).
func (a *Allocator) listsVouchesLocked(me peerInfo) bool {
	return a.listSwitchLocked(&a.listsVouches, me.ListsVouches, a.cfg.VouchReclaims, "vouches: listing the silent peers this peer vouches for, and taking reclaims of a peer's listed space only with a majority's vouches")
}

// longestVouch is the number of runs of the longest of vs.
func longestVouch(vs []vouch) int {
	n := 0
	for _, v := range vs {
		n = max(n, len(v.Runs))
	}
	return n
}

// staleListingsLocked returns the spans that a peer not removed lists in
// its newest info but does not own as a plain owner in this peer's ring:
// what it has not yet learnt it lost (or what this peer has not yet learnt
// it got). Sorted, merged. One walk per listed span.
func (a *Allocator) staleListingsLocked() []span {
	var out []span
	r := a.st.ring
	for name, p := range a.st.peers {
		if p.Removed || !p.ListsOwned {
			continue
		}
		for _, sp := range p.Owned {
			for i := r.find(sp.start); i < len(r.segs) && r.segs[i].start < sp.end; i++ {
				if !r.segs[i].e.plainOf(name) {
					out = append(out, span{max(sp.start, r.segs[i].start), min(sp.end, r.end(i))})
				}
			}
		}
	}
	return unionSpans(out, nil)
}
