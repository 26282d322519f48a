package ipam

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Bounds on what a peer may claim. Every peer holding the mesh key can send
// any state, so the merge refuses what no honest peer sends, before it costs
// anything or changes anything (docs/ipam.md, "Bounds on what a peer may
// claim"). Each bound is defined here once.
const (
	// MaxStateBytes is the largest encoded state (or message) accepted; a
	// larger one is refused before it is decoded. An honest state of 1000
	// peers with 100 pods each is about 250 KB.
	MaxStateBytes = 1 << 20
	// maxPeers bounds the peer table: a new name beyond it is refused.
	// Above Kubernetes' 5000 nodes with room to spare: with 1024, the
	// bound of earlier releases, a mesh of more nodes could not form
	// (docs/scale.md, "The IPAM's first wall"). A name still needs to be
	// a live member to get in (below), so the bound is not what keeps a
	// flood of invented names out.
	maxPeers = 8192
	// maxHeld bounds one peer's Held list.
	maxHeld = 4096
	// maxOwnedSpans bounds the spans an info lists as its peer's space
	// (peerInfo.Owned). A peer's space is a few runs: donations give the
	// upper half of a run away, claims add a dead peer's.
	maxOwnedSpans = maxHeld
	// maxForeignHeld bounds the addresses a peer may hold outside the space
	// it owns (or owned, as a removed peer): pods that kept their address
	// when the ring moved under them (a seeding clash, a removal of a live
	// peer). More is refused, so a peer cannot reserve another's space.
	maxForeignHeld = 1024
	// maxEpochStep is how far a peer's epoch may advance past what this
	// peer knows of it (an rmpeer adds one).
	maxEpochStep = 1024
	// maxRingStep is how far a ring entry's version may advance past the
	// one this peer has for the same address (each transfer adds one).
	maxRingStep = 1 << 20
	// maxForeignRingVersion bounds the versions of a ring of another seed
	// (or any ring, for a peer that has none yet): our own versions say
	// nothing about it, and a long-lived ring's versions grow by
	// reclaimVersionJump per automatic reclaim, so a joiner must accept
	// far more than one step from zero. It leaves 2^22 times that room
	// below maxCounter.
	maxForeignRingVersion = 1 << 40
	// maxCounter is the ceiling of every epoch and version: a value at or
	// above it is refused, so the +1 of the next write never wraps.
	maxCounter = 1 << 62
	// maxClockAhead is how far a peer info's version, which is at least the
	// publisher's clock in milliseconds, may lie ahead of this peer's
	// clock. Clocks of the mesh must agree within it, with room for the
	// versionStep a restart adds.
	maxClockAhead = time.Hour
)

// ErrRejected means a remote state or part of it broke a bound; the rest of
// the state (if any) was merged. Counted per reason in Status.Rejected.
var ErrRejected = errors.New("ipam: input refused")

// The reasons input is refused: the label of the rejection metric.
const (
	RejectOversized   = "oversized"      // larger than MaxStateBytes
	RejectCorrupt     = "corrupt"        // not a decodable state or message
	RejectRange       = "range-mismatch" // another cluster range
	RejectCounter     = "counter"        // an epoch or version jumped beyond its step or ceiling
	RejectFuture      = "future-version" // a version ahead of our clock by more than maxClockAhead
	RejectHeld        = "held"           // a Held list (or list of owned spans) beyond its size, or Held outside the peer's space
	RejectUnknownPeer = "unknown-peer"   // a new name that is no member and owns nothing
	RejectPeerTable   = "peer-table-full"
	RejectSeed        = "seed" // a seed claiming more members than maxPeers
	// Signed peer infos (sign.go): an unsigned info where a signature is
	// due, one that does not verify (or is signed by another node than
	// the peer and is no removal), one signed under a name bound to no
	// identity.
	RejectUnsigned      = "unsigned-info"
	RejectBadSignature  = "bad-info-signature"
	RejectUnknownSigner = "unknown-signer"
	// A ring entry that moves space of a peer whose newest info still
	// lists it as its own (releaseRuleLocked).
	RejectUnreleased = "unreleased-transfer"
)

// RejectReasons lists every reason, for metrics.
var RejectReasons = []string{RejectOversized, RejectCorrupt, RejectRange, RejectCounter, RejectFuture, RejectHeld, RejectUnknownPeer, RejectPeerTable, RejectSeed, RejectUnsigned, RejectBadSignature, RejectUnknownSigner, RejectUnreleased}

// guard counts what was refused; one note per reason (the last), so its
// size is bounded by the number of reasons whatever a peer sends.
type guard struct {
	count map[string]uint64
	note  map[string]string
}

// rejectLocked counts a refusal and keeps its description for Status. It
// logs the first refusal of each reason only: a flood must not flood the
// log.
func (a *Allocator) rejectLocked(reason, detail string) {
	if a.guard.count == nil {
		a.guard.count, a.guard.note = map[string]uint64{}, map[string]string{}
	}
	if a.guard.count[reason] == 0 {
		a.log.Warn("refused IPAM input beyond a bound (further ones of this reason are only counted)", "reason", reason, "detail", detail)
	}
	a.guard.count[reason]++
	a.guard.note[reason] = detail
}

// refuseOversized counts and refuses input larger than MaxStateBytes,
// before any decoding.
func (a *Allocator) refuseOversized(from string, n int) error {
	if n <= MaxStateBytes {
		return nil
	}
	detail := fmt.Sprintf("%d bytes from %s (at most %d)", n, orUnknown(from), MaxStateBytes)
	a.mu.Lock()
	a.rejectLocked(RejectOversized, detail)
	a.mu.Unlock()
	return fmt.Errorf("%w: %s: %s", ErrRejected, RejectOversized, detail)
}

func (a *Allocator) refuseCorrupt(from string, err error) {
	a.mu.Lock()
	a.rejectLocked(RejectCorrupt, fmt.Sprintf("from %s: %v", orUnknown(from), err))
	a.mu.Unlock()
}

func orUnknown(s string) string {
	if s == "" {
		return "an unnamed sender"
	}
	return s
}

// rejectionsLocked is Status's view: counts per reason and one line per
// reason that occurred.
func (a *Allocator) rejectionsLocked() (map[string]uint64, []string) {
	if len(a.guard.count) == 0 {
		return nil, nil
	}
	var lines []string
	for _, r := range RejectReasons {
		if n := a.guard.count[r]; n > 0 {
			lines = append(lines, fmt.Sprintf("refused %d IPAM inputs (%s), last: %s; see \"Bounds on what a peer may claim\" in docs/ipam.md", n, r, a.guard.note[r]))
		}
	}
	return maps.Clone(a.guard.count), lines
}

// screenLocked applies the bounds to a decoded remote state. A ring or seed
// out of bounds refuses the whole state (ErrRejected, nothing merged); a
// peer info out of bounds is dropped from w and the rest merges.
func (a *Allocator) screenLocked(w *wireState) error {
	who := orUnknown(w.sender)
	if w.st.seed.Members > maxPeers {
		d := fmt.Sprintf("from %s: seed of %d members", who, w.st.seed.Members)
		a.rejectLocked(RejectSeed, d)
		return fmt.Errorf("%w: %s: %s", ErrRejected, RejectSeed, d)
	}
	if err := a.screenRingLocked(w); err != nil {
		return err
	}
	jr := joinedRing(a.st, w.st)
	space := ownedSpans(jr)
	nowMs := uint64(max(0, a.cfg.Now().Add(maxClockAhead).UnixMilli()))
	added, counted := 0, 0
	for name, p := range a.st.peers {
		if !goneForGood(name, p, space) {
			counted++
		}
	}
	// One count per reason per state, not per info: a state of thousands
	// of forged infos is one refused input, and costs one description.
	refused := map[string]string{}
	dropped := map[string]int{}
	for _, name := range sortedNames(w.st.peers) {
		p := w.st.peers[name]
		cur, known := a.st.peers[name]
		if known && comparePeerInfo(p, cur) <= 0 {
			continue // the join ignores it
		}
		if !known && goneForGood(name, p, space) && (!a.isMember(name) || a.droppedLocked(name, p)) {
			// A tombstone of a name never heard of here (a peer removed
			// before this one joined, or one this peer dropped): it
			// carries nothing to learn, so it is skipped without a
			// word, honest or not.
			delete(w.st.peers, name)
			continue
		}
		reason, detail := "", ""
		switch {
		case beyond(p.Epoch, cur.Epoch, maxEpochStep) || p.Version >= maxCounter:
			reason = RejectCounter
			detail = fmt.Sprintf("epoch %d version %d (known: epoch %d)", p.Epoch, p.Version, cur.Epoch)
		case p.Version > nowMs:
			reason = RejectFuture
			detail = fmt.Sprintf("version %d is %v ahead of this clock", p.Version, time.Duration(p.Version-nowMs)*time.Millisecond+maxClockAhead)
		case len(p.Held) > maxHeld:
			reason, detail = RejectHeld, fmt.Sprintf("%d held addresses (at most %d)", len(p.Held), maxHeld)
		case len(p.Acks) > maxAcks:
			reason, detail = RejectHeld, fmt.Sprintf("%d acknowledged removals (at most %d)", len(p.Acks), maxAcks)
		case len(p.Vouches) > maxVouches || longestVouch(p.Vouches) > maxVouchRuns:
			reason, detail = RejectHeld, fmt.Sprintf("vouches for %d peers, up to %d runs each (at most %d, %d)", len(p.Vouches), longestVouch(p.Vouches), maxVouches, maxVouchRuns)
		case len(p.Owned) > maxOwnedSpans:
			reason, detail = RejectHeld, fmt.Sprintf("%d spans listed as its space (at most %d)", len(p.Owned), maxOwnedSpans)
		case foreignHeld(p.Held, space[name]) > maxForeignHeld:
			reason = RejectHeld
			detail = fmt.Sprintf("%d held addresses outside its space (at most %d)", foreignHeld(p.Held, space[name]), maxForeignHeld)
		case !known && counted+added >= maxPeers:
			reason, detail = RejectPeerTable, fmt.Sprintf("table holds %d peers that count", counted+added)
		case !known && len(space[name]) == 0 && !a.isMember(name) && !(p.Removed && len(p.Held) > 0):
			reason, detail = RejectUnknownPeer, "not a member and owns no space"
		default:
			var skip bool
			if reason, detail, skip = a.signatureRuleLocked(name, w.sender, p, cur, w.verified); skip {
				delete(w.st.peers, name)
				continue
			}
		}
		if reason != "" {
			if _, ok := refused[reason]; !ok {
				refused[reason] = fmt.Sprintf("from %s about %s: %s", who, name, detail)
			}
			dropped[reason]++
			delete(w.st.peers, name)
			continue
		}
		if !known && !goneForGood(name, p, space) {
			added++
		}
	}
	for reason, detail := range refused {
		if n := dropped[reason]; n > 1 {
			detail += fmt.Sprintf(" (and %d more infos of that state)", n-1)
		}
		a.rejectLocked(reason, detail)
	}
	return a.releaseRuleLocked(w, jr)
}

// errDeltaBehind is releaseRuleLocked's answer to a delta that moves space
// this peer still sees with a previous owner whose release it does not
// hold: this peer missed a change before it (a delta that did not reach
// it), so the release may well be in a state it has not seen. A delta
// carries the infos of its writer, of the peers its runs name and of those
// whose space its changed runs were just before, not of every earlier
// owner of its runs: one version ahead is no sign
// of a forgery either, as a delta also carries, unchanged, the run after
// each change (delta.go), which its writer may have taken over by an
// rmpeer whose own delta this peer missed. Not a refusal: the delta is
// left unmerged, and the whole state that carries the release comes by
// push/pull, where the rule counts a refusal.
var errDeltaBehind = errors.New("ipam: delta moves space whose earlier change this peer has not seen")

// releaseRuleLocked refuses a state that moves space of a peer that has
// not released it (docs/ipam.md, "Signed ring transfers"): wherever the
// merge would replace an entry of ours naming X as plain owner by one
// that does not, X's newest info (ours, or the state's if it passed the
// screen) must not list that space as X's, unless X is removed (an
// operator's or an authority's word, itself signed) or runs a lease pool
// (automatic reclaim takes a silent peer's space without its word) and,
// if X's info marks its space as protected by vouches, a majority of the
// voters vouch that X fell silent while it owned the run (vouch.go).
// X lists its space in every info once the mesh reads the
// list, and writes a new info in the same step as a transfer of its own,
// so an honest state never fails this: whoever carries the transfer got
// it from a state that carried X's release, and merges keep both.
// jr is the merged ring. One walk over both rings, and a binary search in
// X's list per entry replaced.
func (a *Allocator) releaseRuleLocked(w *wireState, jr ring) error {
	mine := a.st.ring
	if a.st.seed.isZero() || a.st.seed != w.st.seed || mine.size != jr.size {
		return nil // a seed replaces the ring whole, another seed's versions mean nothing here
	}
	i, j := 0, 0
	for pos := uint64(0); pos < mine.size; {
		m, e := mine.segs[i].e, jr.segs[j].e
		em, ej := mine.end(i), jr.end(j)
		end := min(em, ej)
		if x := m.Owner; x != "" && m.plainOf(x) && !e.plainOf(x) {
			run := span{pos, end}
			if p := a.newestInfoLocked(w, x); p.ListsOwned && !p.Removed && overlaps(p.Owned, run) && !(p.Leased && (!p.ListsVouches || a.vouchedMoveLocked(w, x, run))) {
				if w.delta {
					return errDeltaBehind
				}
				d := fmt.Sprintf("from %s: ring entry %s at %s (%d addresses) moves space of %s, whose newest info (version %d) still lists it as its own", orUnknown(w.sender), describeEntry(e), offsetAddr(a.cfg.Range, pos), end-pos, x, p.Version)
				if p.Leased {
					d += ", and no majority of the voters vouches that it fell silent"
				}
				a.rejectLocked(RejectUnreleased, d)
				return fmt.Errorf("%w: %s: %s", ErrRejected, RejectUnreleased, d)
			}
		}
		pos = end
		if em == pos {
			i++
		}
		if ej == pos {
			j++
		}
	}
	return nil
}

// newestInfoLocked is name's info as the merge of w will leave it: ours or
// w's, whichever is newer (w's infos have passed the screen).
func (a *Allocator) newestInfoLocked(w *wireState, name string) peerInfo {
	p := a.st.peers[name]
	if q, ok := w.st.peers[name]; ok && comparePeerInfo(q, p) > 0 {
		return q
	}
	return p
}

// describeEntry names a ring entry in a refusal.
func describeEntry(e entry) string {
	switch {
	case e.isContested():
		return fmt.Sprintf("(version %d, contested)", e.Version)
	case e.Owner == "":
		return fmt.Sprintf("(version %d, tombstone of %s)", e.Version, e.Dead)
	case e.Dead != "":
		return fmt.Sprintf("(version %d, %s's claim of %s's space)", e.Version, e.Owner, e.Dead)
	}
	return fmt.Sprintf("(version %d, owner %s)", e.Version, e.Owner)
}

// goneForGood says whether a peer's info is only a tombstone: removed,
// holding nothing, owning nothing. Such entries stay in the table (a
// CRDT: dropped, the name would come back with the next state that
// carries it, and the removal must keep beating the peer's late
// heartbeats), but do not count towards maxPeers, so a long-lived mesh
// whose nodes come and go never fills the table. They only come from
// removals of names that existed. Each still costs its bytes in every
// whole state (noteStateSizeLocked warns as the state nears
// MaxStateBytes).
func goneForGood(name string, p peerInfo, space map[string][]span) bool {
	return p.Removed && len(p.Held) == 0 && len(space[name]) == 0
}

// screenRingLocked refuses a ring whose entries jump ahead of ours by more
// than maxRingStep, or reach maxCounter. Across seeds versions start
// again, so against another seed's ring only maxForeignRingVersion
// applies.
//
// It also refuses a seeded ring with an entry of version 0 that names a
// peer: no writer writes one (seeding writes version 1), and a delta
// leaves the unseeded entry, version 0, wherever it carries nothing, so
// that entry must stay below every entry a ring holds.
func (a *Allocator) screenRingLocked(w *wireState) error {
	mine, theirs := a.st.ring, w.st.ring
	if !w.st.seed.isZero() {
		for _, sg := range theirs.segs {
			if sg.e.Version == 0 && sg.e != (entry{}) {
				d := fmt.Sprintf("from %s: ring entry of version 0 at offset %d names a peer", orUnknown(w.sender), sg.start)
				a.rejectLocked(RejectCounter, d)
				return fmt.Errorf("%w: %s: %s", ErrRejected, RejectCounter, d)
			}
		}
	}
	if a.st.seed != w.st.seed || mine.size != theirs.size {
		for _, sg := range theirs.segs {
			if sg.e.Version >= maxForeignRingVersion {
				d := fmt.Sprintf("from %s: ring version %d at offset %d of another seed (bound %d)", orUnknown(w.sender), sg.e.Version, sg.start, uint64(maxForeignRingVersion))
				a.rejectLocked(RejectCounter, d)
				return fmt.Errorf("%w: %s: %s", ErrRejected, RejectCounter, d)
			}
		}
		return nil
	}
	i, j := 0, 0
	for pos := uint64(0); pos < theirs.size; {
		e, base := theirs.segs[j].e, mine.segs[i].e.Version
		if beyond(e.Version, base, maxRingStep) {
			d := fmt.Sprintf("from %s: ring version %d at offset %d (ours %d)", orUnknown(w.sender), e.Version, pos, base)
			a.rejectLocked(RejectCounter, d)
			return fmt.Errorf("%w: %s: %s", ErrRejected, RejectCounter, d)
		}
		em, et := mine.end(i), theirs.end(j)
		pos = min(em, et)
		if em == pos {
			i++
		}
		if et == pos {
			j++
		}
	}
	return nil
}

// beyond says whether v reaches maxCounter or exceeds base by more than
// step, without overflow whatever base is (a state file written before the
// bounds may hold anything).
func beyond(v, base, step uint64) bool {
	return v >= maxCounter || v > base && v-base > step
}

// isMember is the unknown-peer rule's membership test: liveLocked, except
// that without Config.IsMember every name counts as one.
func (a *Allocator) isMember(name string) bool {
	return a.cfg.IsMember == nil || a.liveLocked(name)
}

// joinedRing is the ring join(s, o) will have.
func joinedRing(s, o state) ring {
	switch c := compareSeed(s.seed, o.seed); {
	case c > 0:
		return s.ring
	case c < 0:
		return o.ring
	}
	return joinRing(s.ring, o.ring)
}

// ownedSpans maps each name to the spans it owns, claims as heir or owned
// as a removed peer (Dead), in one pass over the ring.
func ownedSpans(r ring) map[string][]span {
	out := map[string][]span{}
	add := func(name string, sp span) {
		if name == "" {
			return
		}
		l := out[name]
		if n := len(l); n > 0 && l[n-1].end == sp.start {
			l[n-1].end = sp.end
		} else {
			l = append(l, sp)
		}
		out[name] = l
	}
	for i, s := range r.segs {
		sp := span{s.start, r.end(i)}
		add(s.e.Owner, sp)
		if s.e.Dead != s.e.Owner {
			add(s.e.Dead, sp)
		}
	}
	return out
}

// foreignHeld counts the (sorted) held offsets outside spans (sorted).
func foreignHeld(held []uint64, spans []span) int {
	n, k := 0, 0
	for _, off := range held {
		for k < len(spans) && spans[k].end <= off {
			k++
		}
		if k == len(spans) || off < spans[k].start {
			n++
		}
	}
	return n
}

func sortedNames(m map[string]peerInfo) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// boundMapsLocked forgets liveness records of names no longer in the peer
// table (senders of refused states), so they stay bounded by it.
func (a *Allocator) boundMapsLocked() {
	for name := range a.liveness.echo {
		if _, ok := a.st.peers[name]; !ok {
			delete(a.liveness.echo, name)
		}
	}
	for name := range a.liveness.heldBy {
		if _, ok := a.st.peers[name]; !ok {
			delete(a.liveness.heldBy, name)
		}
	}
	for name := range a.liveness.lastSeen {
		if _, ok := a.st.peers[name]; !ok {
			delete(a.liveness.lastSeen, name)
		}
	}
}
