package ipam

import (
	"cmp"
	"slices"
)

// entry is the register kept for every address of the cluster range. The
// ring is a map from address to entry, merged by taking the maximum entry
// address by address; because entries are totally ordered that maximum is
// commutative, associative and idempotent.
type entry struct {
	// Version grows by one at each write. Only the current owner writes the
	// next version of its addresses (a transfer), except for the reclaim of
	// a removed peer, where Dead records whose space it was.
	Version uint64
	// Owner is the peer allowed to allocate here; "" means nobody (never
	// seeded, or a tombstone waiting for its heir).
	Owner string
	// Dead names the removed peer a tombstone or a fresh claim came from.
	// A peer allocates only where Owner is itself and Dead is empty.
	Dead string
}

// compareEntry orders entries: higher version first. Equal versions with
// different content only come from independent writers; then a plain owner
// beats a reclaim entry (a transfer the dead peer made just before dying
// beats a tombstone written without knowing of it), then names decide, so
// every replica picks the same winner.
func compareEntry(a, b entry) int {
	if c := cmp.Compare(a.Version, b.Version); c != 0 {
		return c
	}
	if c := cmpBool(a.Dead == "", b.Dead == ""); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Owner, b.Owner); c != 0 {
		return c
	}
	return cmp.Compare(a.Dead, b.Dead)
}

// contested is the entry two different heirs' claims of one tombstone
// merge into: version v, no owner, no dead peer. A claim (Owner set, Dead
// set) is one heir's word that the tombstoned run is its; two heirs can
// claim the same run at the same version when one of them inherited, unseen,
// the space of an earlier heir (docs/ipam.md, "An heir reclaimed in turn").
// Were one claim to win by name, a peer that had answered the first heir
// with its claim would answer the second with the second's claim, both
// heirs would count it, and both could confirm. Merged into this entry
// instead, a peer's state holds at most one claim of a given version ever:
// the first it learnt, until it learns a second and then neither. That is
// the promise of an acceptor in Paxos, kept by the merge itself, with no
// record beside the ring. At equal versions contested beats every claim
// and tombstone and loses to every plain owner, which is also where
// compareEntry puts it, so a peer of the previous release (which takes the
// maximum of two claims) merges it the same way.
func contested(v uint64) entry { return entry{Version: v} }

// isContested says whether e is a contested run's entry (see contested):
// no owner and no dead peer, above the unseeded version 0.
func (e entry) isContested() bool { return e.Version > 0 && e.Owner == "" && e.Dead == "" }

// plainOf says whether name owns e's addresses as a plain owner (no claim,
// no tombstone): where it allocates, and what its infos list as owned.
func (e entry) plainOf(name string) bool { return e.Owner == name && e.Dead == "" }

// isClaim says whether e is an heir's claim of a tombstoned run.
func (e entry) isClaim() bool { return e.Owner != "" && e.Dead != "" }

// joinEntry is the CRDT merge of one address's two registers: the higher
// version; at equal versions the maximum by compareEntry, except that two
// different claims merge into contested. It is commutative, associative
// and idempotent: the join of a set of entries of one version is its
// maximum plain owner if it has one, else contested if it holds two
// different claims or a contested entry, else its one claim, else its
// maximum tombstone (TestJoinEntryIsASemilattice).
func joinEntry(a, b entry) entry {
	if a != b && a.Version == b.Version && a.isClaim() && b.isClaim() {
		return contested(a.Version)
	}
	if compareEntry(b, a) > 0 {
		return b
	}
	return a
}

// seg is a run of addresses sharing one entry: it covers [start, next
// segment's start).
type seg struct {
	start uint64
	e     entry
}

// ring is the canonical run-length form of the per-address map: segments
// sorted, the first at 0, no two neighbours with equal entries. Canonical
// form makes equal maps compare equal.
type ring struct {
	size uint64
	segs []seg
}

func newRing(size uint64) ring {
	return ring{size: size, segs: []seg{{start: 0}}}
}

func (r ring) clone() ring {
	return ring{size: r.size, segs: append([]seg(nil), r.segs...)}
}

// end returns the end of segment i.
func (r ring) end(i int) uint64 {
	if i+1 < len(r.segs) {
		return r.segs[i+1].start
	}
	return r.size
}

// find returns the index of the segment holding offset.
func (r ring) find(off uint64) int {
	lo, hi := 0, len(r.segs)
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if r.segs[mid].start <= off {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

func (r ring) get(off uint64) entry { return r.segs[r.find(off)].e }

func appendSeg(out []seg, start uint64, e entry) []seg {
	if n := len(out); n > 0 && out[n-1].e == e {
		return out
	}
	return append(out, seg{start, e})
}

// joinRing is the CRDT merge: the address-wise join (joinEntry) of a and b.
func joinRing(a, b ring) ring {
	out := make([]seg, 0, max(len(a.segs), len(b.segs)))
	i, j := 0, 0
	for pos := uint64(0); pos < a.size; {
		out = appendSeg(out, pos, joinEntry(a.segs[i].e, b.segs[j].e))
		ea, eb := a.end(i), b.end(j)
		pos = min(ea, eb)
		if ea == pos {
			i++
		}
		if eb == pos {
			j++
		}
	}
	return ring{size: a.size, segs: out}
}

// update rewrites the entries of [start, end) with f, segment by segment.
func (r ring) update(start, end uint64, f func(entry) entry) ring {
	out := make([]seg, 0, len(r.segs)+2)
	for i, s := range r.segs {
		s0, s1 := s.start, r.end(i)
		if s1 <= start || s0 >= end {
			out = appendSeg(out, s0, s.e)
			continue
		}
		if s0 < start {
			out = appendSeg(out, s0, s.e)
		}
		out = appendSeg(out, max(s0, start), f(s.e))
		if s1 > end {
			out = appendSeg(out, end, s.e)
		}
	}
	return ring{size: r.size, segs: out}
}

func (r ring) equal(o ring) bool {
	if r.size != o.size || len(r.segs) != len(o.segs) {
		return false
	}
	for i := range r.segs {
		if r.segs[i] != o.segs[i] {
			return false
		}
	}
	return true
}

// span is a half-open range of offsets.
type span struct{ start, end uint64 }

func (s span) len() uint64 { return s.end - s.start }

func compareSpan(a, b span) int {
	if c := cmp.Compare(a.start, b.start); c != 0 {
		return c
	}
	return cmp.Compare(a.end, b.end)
}

// overlaps says whether any of the sorted, disjoint spans l meets s.
func overlaps(l []span, s span) bool {
	i, _ := slices.BinarySearchFunc(l, s.start, func(x span, off uint64) int {
		if x.end <= off {
			return -1
		}
		return 1
	})
	return i < len(l) && l[i].start < s.end
}

// spans returns the maximal runs of addresses whose entry satisfies keep.
func (r ring) spans(keep func(entry) bool) []span {
	var out []span
	for i, s := range r.segs {
		if !keep(s.e) {
			continue
		}
		if n := len(out); n > 0 && out[n-1].end == s.start {
			out[n-1].end = r.end(i)
		} else {
			out = append(out, span{s.start, r.end(i)})
		}
	}
	return out
}

// hasOwner says whether some address of r has an owner, plain or claiming.
func (r ring) hasOwner() bool {
	for _, s := range r.segs {
		if s.e.Owner != "" {
			return true
		}
	}
	return false
}

// owned returns the spans where owner may allocate.
func (r ring) owned(owner string) []span {
	return r.spans(func(e entry) bool { return e.plainOf(owner) })
}

// rewrite applies f to every segment whose entry satisfies match and
// reports how many segments it rewrote.
func (r ring) rewrite(match func(entry) bool, f func(entry) entry) (ring, int) {
	out := make([]seg, 0, len(r.segs))
	n := 0
	for _, s := range r.segs {
		e := s.e
		if match(e) {
			e = f(e)
			n++
		}
		out = appendSeg(out, s.start, e)
	}
	return ring{size: r.size, segs: out}, n
}
