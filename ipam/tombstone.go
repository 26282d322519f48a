package ipam

import (
	"cmp"
	"slices"
)

// Dropping tombstones (docs/ipam.md, "Dropping tombstones").
//
// A removed peer that holds nothing and owns nothing (goneForGood) stays in
// the table as a tombstone: dropped too early, a peer that still holds the
// name's older, unremoved info would keep it for good, as a voter that
// never answers, and could refuse the states that moved its space. So each
// peer lists, in its signed info, the tombstones it holds (Acks), and a
// peer drops a tombstone once every peer of its table that counts has
// listed it, and that has held for dropGraceTicks. An acknowledgement is
// remembered once seen (ackBook.seen): a peer that has dropped the
// tombstone lists it a while longer (ackKeepTicks) and then no more, which
// must not read as "never heard of it".

// ack names one removal: the removed peer and the epoch of its Removed
// info (every removal writes a new epoch, so a later removal of a name
// that came back is another one).
type ack struct {
	Name  string
	Epoch uint64
}

func compareAck(a, b ack) int {
	if c := cmp.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return cmp.Compare(a.Epoch, b.Epoch)
}

const (
	// maxAcks bounds the acknowledgements an info lists (more is refused,
	// as held): a peer holding more tombstones lists those first by name,
	// which every peer picks alike, so the backlog drains in batches.
	maxAcks = 256
	// dropGraceTicks is how long every peer that counts must have
	// acknowledged a tombstone before it is dropped here: time for the
	// states of a peer this one has not heard of yet (one that joined
	// where the removal had not reached) to arrive first.
	dropGraceTicks = 60
	// ackKeepTicks is how long a peer lists a tombstone it dropped, for
	// the peers that have not seen its acknowledgement yet.
	ackKeepTicks = 3600
)

// ackBook is what a peer knows of the acknowledgements of the tombstones
// it holds. Guarded by the Allocator's lock.
type ackBook struct {
	// seen: pending removal -> the peers seen acknowledging it.
	seen map[ack]map[string]bool
	// ready: pending removal -> the tick from which every peer that counts
	// had acknowledged it.
	ready map[ack]uint64
	// dropped: removal dropped here (or listed by this peer's info before
	// a restart) -> the tick from which it counts towards ackKeepTicks.
	dropped map[ack]uint64
	// count of tombstones dropped here since the start (status).
	count int
}

// pendingAcksLocked returns the tombstones of the table: removed peers that
// hold and own nothing (goneForGood), sorted by name. nil when there are
// none, without walking the ring.
func (a *Allocator) pendingAcksLocked() []ack {
	found := false
	for name, p := range a.st.peers {
		if p.Removed && len(p.Held) == 0 && name != a.cfg.Self {
			found = true
			break
		}
	}
	if !found {
		return nil
	}
	space := ownedSpans(a.st.ring)
	var out []ack
	for name, p := range a.st.peers {
		if name != a.cfg.Self && goneForGood(name, p, space) {
			out = append(out, ack{name, p.Epoch})
		}
	}
	slices.SortFunc(out, compareAck)
	return out
}

// ownAcksLocked is the Acks list of this peer's next info: the first
// maxAcks tombstones it holds, then those it dropped within ackKeepTicks
// (the most recent first), sorted by name. me is its current info, whose
// list carries over what it dropped before a restart. It also records the
// acknowledgements the table shows of the tombstones this peer holds
// (noteAcksLocked), with the same walk over the table and the ring: every
// merge and tick publishes, and an acknowledgement seen must be
// remembered before the peer's next info, which may list it no more.
func (a *Allocator) ownAcksLocked(me peerInfo) []ack {
	pending := a.pendingAcksLocked()
	a.noteAcksLocked(pending)
	if a.acks.dropped == nil {
		a.acks.dropped = map[ack]uint64{}
	}
	names := map[string]bool{}
	for _, k := range pending {
		names[k.Name] = true
	}
	for _, k := range me.Acks {
		// Listed before and gone from the table since: dropped before a
		// restart (a name still in the table was not dropped: the peer
		// came back, or another removal replaced this one).
		if _, ok := a.acks.dropped[k]; !ok {
			if _, inTable := a.st.peers[k.Name]; !inTable {
				a.acks.dropped[k] = a.tick
			}
		}
	}
	out := slices.Clone(pending[:min(len(pending), maxAcks)])
	var recent []ack
	for k, t := range a.acks.dropped {
		switch {
		case a.tick-t < ackKeepTicks && !names[k.Name]:
			recent = append(recent, k)
		case !slices.Contains(me.Acks, k):
			// Expired, and no longer in this peer's info: forgotten.
			delete(a.acks.dropped, k)
		}
	}
	slices.SortFunc(recent, func(x, y ack) int {
		if c := cmp.Compare(a.acks.dropped[y], a.acks.dropped[x]); c != 0 {
			return c
		}
		return compareAck(x, y)
	})
	for _, k := range recent {
		if len(out) >= maxAcks {
			break
		}
		if !names[k.Name] {
			names[k.Name] = true
			out = append(out, k)
		}
	}
	slices.SortFunc(out, compareAck)
	return out
}

// noteAcksLocked records which peers acknowledge which of the tombstones
// this peer holds, and forgets the records of removals it no longer holds.
func (a *Allocator) noteAcksLocked(pending []ack) {
	if len(pending) == 0 {
		clear(a.acks.seen)
		clear(a.acks.ready)
		return
	}
	if a.acks.seen == nil {
		a.acks.seen, a.acks.ready = map[ack]map[string]bool{}, map[ack]uint64{}
	}
	held := make(map[ack]bool, len(pending))
	for _, k := range pending {
		held[k] = true
	}
	for k := range a.acks.seen {
		if !held[k] {
			delete(a.acks.seen, k)
		}
	}
	for k := range a.acks.ready {
		if !held[k] {
			delete(a.acks.ready, k)
		}
	}
	for name, p := range a.st.peers {
		for _, k := range p.Acks {
			if !held[k] {
				continue
			}
			s := a.acks.seen[k]
			if s == nil {
				s = map[string]bool{}
				a.acks.seen[k] = s
			}
			s[name] = true
		}
	}
}

// ackedByAllLocked says whether every peer that counts has acknowledged
// removal k: every peer of the table but this one, the removed one, and
// peers removed themselves (an operator's or an authority's word that
// they are gone); and every live member, also one whose info has not
// reached this peer yet (a joiner that came in where the removal had not
// reached, and may hold the removed peer's older info).
func (a *Allocator) ackedByAllLocked(k ack) bool {
	s := a.acks.seen[k]
	counts := func(name string) bool {
		p, ok := a.st.peers[name]
		return name != a.cfg.Self && name != k.Name && !(ok && p.Removed)
	}
	for name := range a.st.peers {
		if counts(name) && !s[name] {
			return false
		}
	}
	for name := range a.members {
		if counts(name) && !s[name] {
			return false
		}
	}
	return true
}

// dropTombstonesLocked drops the tombstones every peer that counts has
// acknowledged for dropGraceTicks. Only once this peer lists its own
// acknowledgements (the others then wait for it too), and not while it
// recovers (I6: its table may lack what a majority knows). It reports
// whether it dropped any; the caller persists the state.
func (a *Allocator) dropTombstonesLocked() bool {
	if !a.st.peers[a.cfg.Self].ListsAcks || a.recovering {
		return false
	}
	pending := a.pendingAcksLocked()
	a.noteAcksLocked(pending)
	if a.acks.dropped == nil {
		a.acks.dropped = map[ack]uint64{}
	}
	dropped := 0
	for _, k := range pending {
		if !a.ackedByAllLocked(k) || a.liveLocked(k.Name) {
			delete(a.acks.ready, k)
			continue
		}
		since, ok := a.acks.ready[k]
		if !ok {
			a.acks.ready[k] = a.tick
			continue
		}
		if a.tick-since < dropGraceTicks {
			continue
		}
		delete(a.st.peers, k.Name)
		delete(a.acks.seen, k)
		delete(a.acks.ready, k)
		a.acks.dropped[k] = a.tick
		a.acks.count++
		dropped++
	}
	if dropped == 0 {
		return false
	}
	a.log.Info("dropped tombstones every peer acknowledged", "count", dropped, "total", a.acks.count)
	a.dirty = true
	a.boundMapsLocked()
	return true
}

// listsAcksLocked says whether this peer's next info lists its
// acknowledgements (listSwitchLocked).
func (a *Allocator) listsAcksLocked(me peerInfo) bool {
	return a.listSwitchLocked(&a.listsAcks, me.ListsAcks, a.cfg.AckRemovals, "acknowledged removals: listing the tombstones this peer holds")
}

// droppedLocked says whether removal k was dropped here not long ago
// (ackKeepTicks): a state of a peer that holds it still brings it, and it
// must not come back.
func (a *Allocator) droppedLocked(name string, p peerInfo) bool {
	_, ok := a.acks.dropped[ack{name, p.Epoch}]
	return ok && p.Removed
}
