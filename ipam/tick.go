package ipam

import "strings"

// SetMembers tells the Allocator which peers are alive, by name. The daemon
// calls it on every membership change; the map is copied. Space requests
// and bootstrap only go to live members. News may send at once (a new
// peer's space request, a donation held for a requester not known live
// until now), so it is not for a caller that must never wait on the
// network. Safe for concurrent use.
func (a *Allocator) SetMembers(alive map[string]bool) {
	a.mu.Lock()
	a.members = make(map[string]bool, len(alive)+1)
	for n, ok := range alive {
		if ok {
			a.members[n] = true
		}
	}
	a.members[a.cfg.Self] = true
	a.wakeLocked() // a donor may have become reachable, or gone
	if !a.closed {
		a.promptLocked()
		a.answerHeldAsksLocked()
	}
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
}

// Tick does the periodic work: heartbeat, bootstrap retries, space request
// retries, lease pool, reclaim timers and claim confirmations. The daemon
// calls it every second; simulations call it when they like. It may write
// the state file and send messages; safe for concurrent use.
func (a *Allocator) Tick() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.tick++
	before := a.st.ring
	a.sendSignedLocked() // at once when the last member able to read them joins
	a.heartbeatLocked()
	a.paxosTickLocked()
	a.recoveryTickLocked()
	a.refillPoolLocked()
	a.admitLocked()
	a.deltaForwards = 0
	clear(a.digestAnswered)
	if ring := a.st.ring; a.autoReclaimLocked() {
		a.announceLocked(ring)
	}
	a.claimOrphansLocked()
	if !a.st.ring.equal(before) {
		a.afterRingChangeLocked()
		a.publishLocked()
		if err := a.saveLocked(); err != nil {
			a.log.Error("could not persist the ring", "err", err)
		}
	}
	if a.dropTombstonesLocked() {
		a.heartbeatLocked()
	}
	if a.tick%2 == 0 {
		a.askEchoesLocked()
	}
	if a.dirty {
		// Something learnt or chosen (a gateway, its echo) that no send
		// has flushed yet.
		if err := a.saveLocked(); err != nil {
			a.log.Error("could not persist the state", "err", err)
		}
	}
	a.clearStaleProblemsLocked()
	a.pruneClaimEchoesLocked()
	a.answerHeldAsksLocked()
	// A peer that owns no space has no gateway yet (its node cannot be
	// reached at all) or cannot place a pod: it asks for space before any
	// pod does (askForSpaceLocked does nothing until the ring is seeded,
	// and asks at most every askEvery ticks).
	if a.needsSpaceLocked() {
		a.askForSpaceLocked()
	}
	if a.waiting > 0 {
		a.wakeLocked() // re-check lease echoes and reservations
	}
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
}

// clearStaleProblemsLocked forgets reclaim warnings about peers heard from
// again.
func (a *Allocator) clearStaleProblemsLocked() {
	for key := range a.problems {
		name, ok := strings.CutPrefix(key, "reclaim:")
		if !ok {
			continue
		}
		if s, seen := a.liveness.lastSeen[name]; seen && a.cfg.Now().Sub(s.at) < a.cfg.ReclaimAfter {
			delete(a.problems, key)
		}
	}
}
