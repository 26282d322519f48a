package ipam

import (
	"fmt"
	"slices"
)

// Message types: the first byte of every message given to the Transport.
const (
	msgState    byte = 1 // a full state (the sender's LocalState)
	msgAsk      byte = 2 // "I am out of space", body: requester name
	msgPrepare  byte = 3 // bootstrap Paxos, see bootstrap.go
	msgPromise  byte = 4
	msgAccept   byte = 5
	msgAccepted byte = 6
	msgEchoReq  byte = 7 // a full state; answer with ours (lease echoes)
)

// LocalState returns this peer's full state for memberlist's push/pull.
// Non-blocking; safe for concurrent use.
// Whatever it returns is in the state file first (I4); a recovering peer
// returns only its own info (I6).
func (a *Allocator) LocalState() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dirty {
		if err := a.saveLocked(); err != nil {
			a.log.Error("not sending state: state file not written", "err", err)
			return encodeState(a.cfg.Range, a.cfg.Self, newState(a.st.ring.size))
		}
	}
	if a.recovering {
		return a.selfOnlyStateLocked()
	}
	return a.encodeOwnLocked()
}

// encodeOwnLocked encodes this peer's whole state for sending, and keeps
// the state-size problem up to date with what it sends.
func (a *Allocator) encodeOwnLocked() []byte {
	b := encodeStateAs(a.cfg.Range, a.cfg.Self, a.st, a.sendSignedLocked())
	a.stateBytes = len(b)
	a.noteStateSizeLocked(len(b))
	return b
}

// stateSizeWarn is the size of this peer's encoded state from which status
// warns: three quarters of MaxStateBytes, the most any receiver accepts.
const stateSizeWarn = MaxStateBytes / 4 * 3

// noteStateSizeLocked reports a whole state of n bytes that nears or
// passes MaxStateBytes among the problems, and clears the report when it
// no longer does. Past the bound every receiver refuses the state
// (oversized), so nothing this peer writes reaches anyone. A removed peer
// stays in every state as a tombstone (goneForGood), about 120 bytes with
// its signature, so a mesh whose nodes come and go under new names grows
// towards the bound (docs/ipam.md, "Bounds on what a peer may claim").
//
// The text carries the size and counts, which change with nearly every
// encoding once the state is large, so it is logged only when the level
// changes (near the bound, past it, back under the warning), not at every
// push/pull and broadcast.
func (a *Allocator) noteStateSizeLocked(n int) {
	level := 0
	switch {
	case n > MaxStateBytes:
		level = 2
	case n >= stateSizeWarn:
		level = 1
	}
	logIt := level != a.stateSizeLevel
	a.stateSizeLevel = level
	if level == 0 {
		if logIt {
			a.log.Info("this peer's IPAM state is back under the size that warns", "bytes", n)
		}
		delete(a.problems, problemStateSize)
		return
	}
	consequence := "past it, every peer refuses the state and this peer's IPAM changes reach nobody"
	if level == 2 {
		consequence = "every peer refuses it (oversized): this peer's IPAM changes reach nobody"
	}
	msg := fmt.Sprintf("this peer's IPAM state is %d KiB of the %d KiB a peer accepts (%d peers, %d of them removed and kept as tombstones): %s",
		n>>10, MaxStateBytes>>10, len(a.st.peers), a.removedCountLocked(), consequence)
	a.problems[problemStateSize] = msg
	if logIt {
		a.log.Warn(msg)
	}
}

// removedCountLocked counts the removed peers of the table: tombstones,
// and deleted Nodes whose addresses stay reserved.
func (a *Allocator) removedCountLocked() int {
	n := 0
	for _, p := range a.st.peers {
		if p.Removed {
			n++
		}
	}
	return n
}

// problemStateSize keys the state-size problem.
const problemStateSize = "state-size"

// selfOnlyStateLocked is what a recovering peer sends: an unseeded state
// holding only its own info. Merging it carries the peer's heartbeat and
// Held (so a restarted peer does not look silent, and its pods stay
// reserved) but no ring and nothing about any other peer, so nobody can
// count it as an echo of anything (also on earlier releases). As an echo
// request it asks for the receiver's full state.
func (a *Allocator) selfOnlyStateLocked() []byte {
	st := newState(a.st.ring.size)
	st.peers[a.cfg.Self] = a.st.peers[a.cfg.Self]
	return encodeStateAs(a.cfg.Range, a.cfg.Self, st, a.sendSignedLocked())
}

// isRecoveryState says whether w is such a state: unseeded, and about its
// sender at most.
func isRecoveryState(w wireState) bool {
	if !w.st.seed.isZero() {
		return false
	}
	for name := range w.st.peers {
		if name != w.sender {
			return false
		}
	}
	return true
}

func (a *Allocator) stateMsgLocked() []byte {
	return append([]byte{msgState}, a.encodeOwnLocked()...)
}

// broadcastStateLocked sends this peer's whole state to everyone: the
// seeding of the ring, the end of a recovery (I6), and every ring change
// while some member cannot read deltas (announceLocked).
func (a *Allocator) broadcastStateLocked() {
	a.outbox = append(a.outbox, outMsg{msg: a.stateMsgLocked()})
}

// MergeRemoteState merges a peer's full state (memberlist push/pull), or
// handles its digest (PushPullState). It
// returns an error wrapping ErrCorruptState for undecodable input and
// ErrRangeMismatch for a peer with another cluster range; neither changes
// anything. It never panics on garbage. May write the state file; safe for
// concurrent use.
func (a *Allocator) MergeRemoteState(buf []byte) error {
	if err := a.refuseOversized("", len(buf)); err != nil {
		return err
	}
	if isDigest(buf) {
		a.mu.Lock()
		err := a.mergeDigestLocked(buf)
		out := a.takeOutbox()
		a.mu.Unlock()
		a.flush(out)
		return err
	}
	w, err := decodeState(buf)
	if err != nil {
		a.refuseCorrupt("", err)
		return fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	w.verified = a.preVerify(w)
	a.mu.Lock()
	err = a.mergeLocked(w)
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
	return err
}

// HandleMessage processes a message another peer sent through the Transport.
// from is the sender's name as the daemon knows it. Errors are for logging
// only. Safe for concurrent use.
func (a *Allocator) HandleMessage(from string, msg []byte) error {
	if len(msg) == 0 {
		return fmt.Errorf("%w: empty message from %s", ErrCorruptState, from)
	}
	if err := a.refuseOversized(from, len(msg)); err != nil {
		return err
	}
	// Decoded before taking the lock: a flood of large states must not
	// hold up Allocate while it is parsed.
	var w wireState
	var err error
	if msg[0] == msgState || msg[0] == msgEchoReq || msg[0] == msgDelta {
		if w, err = decodeState(msg[1:]); err == nil {
			if msg[0] == msgDelta && a.knowsDelta(w) {
				// Each peer gets every delta from about ln(N)+3
				// senders: the copies after the first cost no
				// signature check and no merge.
				return nil
			}
			w.verified = a.preVerify(w)
		}
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	switch msg[0] {
	case msgState, msgEchoReq:
		if err != nil {
			a.rejectLocked(RejectCorrupt, fmt.Sprintf("from %s: %v", from, err))
			err = fmt.Errorf("%w: from %s: %v", ErrCorruptState, from, err)
		} else {
			err = a.mergeLocked(w)
			if err == nil && msg[0] == msgEchoReq && w.sender != "" && w.sender != a.cfg.Self {
				// A self-only request comes from a recovering peer, which
				// counts no echo (I6): even a recovering peer answers it,
				// so that a whole cluster restarting at once recovers.
				a.outbox = append(a.outbox, outMsg{to: w.sender, msg: a.stateMsgLocked(), recovery: isRecoveryState(w)})
			}
		}
	case msgDelta:
		if err != nil {
			a.rejectLocked(RejectCorrupt, fmt.Sprintf("from %s: %v", from, err))
			err = fmt.Errorf("%w: from %s: %v", ErrCorruptState, from, err)
		} else {
			err = a.mergeDeltaLocked(from, w, msg)
		}
	case msgAsk:
		d := &decoder{b: msg[1:]}
		who := d.str()
		if d.err != nil || who == "" {
			err = fmt.Errorf("%w: bad space request from %s", ErrCorruptState, from)
		} else {
			a.donateLocked(who)
		}
	case msgPrepare, msgPromise, msgAccept, msgAccepted:
		err = a.handlePaxosLocked(msg)
	default:
		err = fmt.Errorf("%w: unknown message type %d from %s", ErrCorruptState, msg[0], from)
	}
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
	return err
}

// mergeLocked joins a remote state into ours and reacts to what changed.
func (a *Allocator) mergeLocked(w wireState) error {
	if a.closed {
		return ErrClosed
	}
	if w.prefix != a.cfg.Range {
		// Counted, not one problem per sender: sender names are the
		// sender's word, and the problem list stays bounded.
		a.rejectLocked(RejectRange, fmt.Sprintf("peer %s uses cluster range %s but this peer uses %s: their states are ignored; give every peer the same --ipalloc-range", w.sender, w.prefix, a.cfg.Range))
		return fmt.Errorf("%w: %s has %s, we have %s", ErrRangeMismatch, w.sender, w.prefix, a.cfg.Range)
	}
	if err := a.screenLocked(&w); err != nil {
		return err
	}
	old := a.st
	if !old.seed.isZero() && !w.st.seed.isZero() && old.seed != w.st.seed {
		a.seedConflictLocked(w.sender, old.seed, w.st.seed)
	}
	a.st = join(old, w.st)
	for name, p := range w.st.peers {
		cur, ok := old.peers[name]
		if ok && comparePeerInfo(p, cur) <= 0 {
			continue
		}
		if !ok || !sameDurableInfo(p, cur) {
			// Learnt something beyond a heartbeat: it must be durable
			// before it is acted on or echoed (I4).
			a.dirty = true
			if name != a.cfg.Self {
				a.staleReservedLocked()
			}
		}
	}
	if w.delta {
		// Heartbeats learnt, but no echo: a delta is part of its
		// writer's state, and echoes count whole states only.
		a.liveness.observe(a, "", w.st)
	} else {
		a.liveness.observe(a, w.sender, w.st)
	}
	a.boundMapsLocked()
	a.gatewayUsableLocked() // record an echo of a new gateway with what was learnt
	a.noteRecoveryLocked(w)
	if me, ok := a.st.peers[a.cfg.Self]; ok && me.Removed {
		a.problem("removed", "this peer was removed (rmpeer) by another peer while alive: its ranges went to others; its pods keep their addresses (published as held) and it will ask for new space")
	}
	if !a.st.ring.equal(old.ring) || a.st.seed != old.seed {
		if old.seed.isZero() && !a.st.seed.isZero() {
			a.log.Info("ring seeded", "seed", fmt.Sprintf("%x", a.st.seed.ID), "members", a.st.seed.Members)
			if a.joinsLocked() {
				a.markJoiningLocked()
			}
		}
		a.afterRingChangeLocked()
		a.dirty = true
	}
	// Persist what we learnt before acting on it or passing it on, so a
	// restart never makes this peer forget what it has already echoed,
	// voted on or acted on (I4). Heartbeats alone are not worth an fsync.
	if a.dirty {
		if err := a.saveLocked(); err != nil {
			return err
		}
	}
	// Our own info may have come back newer (a restart that lost
	// heartbeats, or an rmpeer tombstone) and must win again.
	a.heartbeatLocked()
	a.promptLocked()
	return nil
}

// sameDurableInfo says whether two infos of one peer differ only in what
// need not survive a restart: the heartbeat version and the advertised
// free count. Held, epochs and removals are what reserve addresses and
// decide quorums, so a change of those is persisted before use.
//
// The first signature seen of a peer counts too: it ends the acceptance of
// its unsigned infos (no downgrade), also after a restart.
func sameDurableInfo(x, y peerInfo) bool {
	return sameContent(x, y) && x.Writer == y.Writer && (len(x.Sig) == 0) == (len(y.Sig) == 0)
}

// sameContent says whether two infos of one peer say the same durable
// things about it: all but the version, the free count and the signature.
func sameContent(x, y peerInfo) bool {
	return x.Epoch == y.Epoch && x.ID == y.ID && x.Leased == y.Leased && x.Removed == y.Removed && x.Joining == y.Joining && slices.Equal(x.Held, y.Held) &&
		x.ListsOwned == y.ListsOwned && slices.Equal(x.Owned, y.Owned) && x.ListsAcks == y.ListsAcks && slices.Equal(x.Acks, y.Acks) &&
		x.ListsVouches == y.ListsVouches && slices.EqualFunc(x.Vouches, y.Vouches, func(a, b vouch) bool { return compareVouch(a, b) == 0 })
}

// afterRingChangeLocked runs the consequences of a new ring: reclaim heirs,
// conflict detection, wake-ups. It writes the ring only through functions
// that broadcast and persist.
func (a *Allocator) afterRingChangeLocked() {
	a.claimOrphansLocked()
	a.checkHeldLocked()
	a.ringChangedLocked()
}

// checkHeldLocked reports allocations this peer holds in space it does not
// own. They stay valid (published in Held, so the owner skips them) but the
// operator should know why the ring moved.
func (a *Allocator) checkHeldLocked() {
	n := 0
	for off := range a.byOff {
		e := a.st.ring.get(off)
		if e.Owner != a.cfg.Self || e.Dead != "" {
			n++
		}
	}
	if n == 0 {
		delete(a.problems, "foreign")
		return
	}
	a.problem("foreign", fmt.Sprintf("%d pod addresses of this peer lie in space it no longer owns; they are reserved for the pods and return to the owner when released", n))
}

func (a *Allocator) seedConflictLocked(sender string, ours, theirs seed) {
	winner := "theirs"
	if compareSeed(ours, theirs) > 0 {
		winner = "ours"
	}
	a.problem("seed", fmt.Sprintf("peer %s's ring was seeded independently (seed %x/%d, ours %x/%d); %s wins. Pods keep their addresses (held addresses are reserved) but addresses both sides gave out before meeting may be duplicated: see the conflicts list",
		sender, theirs.ID, theirs.Members, ours.ID, ours.Members, winner))
}

// noteRecoveryLocked counts a full state merged from another voter towards
// the end of recovery (I6).
func (a *Allocator) noteRecoveryLocked(w wireState) {
	if !a.recovering || w.delta || w.sender == "" || w.sender == a.cfg.Self || isRecoveryState(w) {
		return
	}
	if p, ok := a.st.peers[w.sender]; !ok || p.Removed {
		return
	}
	a.recoveredFrom[w.sender] = true
	a.checkRecoveredLocked()
}

// checkRecoveredLocked ends recovery once full states from a lease quorum
// of voters (ceil(N/2), this peer included) were merged: what this peer
// now knows includes what any of them knew. A lease quorum rather than a
// strict majority, so that a restart while half the peers are down does
// not stop allocation (docs/ipam.md, I6). It then tells everyone its state.
func (a *Allocator) checkRecoveredLocked() {
	if !a.recovering {
		return
	}
	n := a.recoveredCountLocked()
	if n < a.leaseQuorumLocked() {
		return
	}
	a.recovering = false
	a.recoveredFrom = map[string]bool{}
	a.log.Info("state exchanged with a lease quorum after restart: echoing and voting again", "peers", n)
	a.broadcastStateLocked()
}

// recoveredCountLocked counts the voters, this peer included, whose full
// states were merged since the restart (I6).
func (a *Allocator) recoveredCountLocked() int {
	n := 1
	for _, v := range a.votersLocked() {
		if a.recoveredFrom[v] {
			n++
		}
	}
	return n
}

// recoveryTickLocked asks every peer for its state while recovering, with
// only our own info, so nobody counts the request as our echo.
func (a *Allocator) recoveryTickLocked() {
	if !a.recovering || a.tick%askEvery != 0 {
		return
	}
	msg := append([]byte{msgEchoReq}, a.selfOnlyStateLocked()...)
	a.outbox = append(a.outbox, outMsg{msg: msg, recovery: true})
}
