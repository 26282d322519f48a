package ipam

import (
	"cmp"
	"maps"
	"slices"
)

// askEvery is how many ticks a peer waits before asking again for space:
// requests and donations are best effort, so they are simply retried.
const askEvery = 2

// bestDonor is the reachable peer advertising the most free addresses.
func (a *Allocator) bestDonor() (string, bool) {
	d := a.donorsLocked()
	if len(d) == 0 {
		return "", false
	}
	return d[0], true
}

// donorsLocked lists the reachable peers advertising free space, the most
// free first, ties by name: the best donor and, after it, those a space
// request falls back to.
func (a *Allocator) donorsLocked() []string {
	var out []string
	for name, p := range a.st.peers {
		if name != a.cfg.Self && a.members[name] && !p.Removed && p.Free > 0 {
			out = append(out, name)
		}
	}
	slices.SortFunc(out, func(x, y string) int {
		if c := cmp.Compare(a.st.peers[y].Free, a.st.peers[x].Free); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	return out
}

// promptLocked does at once, on news (a merged state, a membership
// change), what Tick would otherwise do only at its next pass for a peer
// still getting started: ask a known donor for space as soon as one is
// reachable, and ask for the echoes of a newly chosen gateway as soon as
// it is chosen. Both were timer-driven (up to askEvery ticks each), which
// made a new node's first range and gateway seconds late. Safety is
// unchanged: takeOutbox persists everything before it is sent (I4), the
// gateway still needs its lease-quorum echo before use, and both requests
// stay rate limited (lastAsk, once per gateway version).
func (a *Allocator) promptLocked() {
	if a.recovering {
		return
	}
	if a.needsSpaceLocked() {
		// Only a direct request: without a known donor, Tick's turn-by-turn
		// echo requests remain the way to learn of one.
		if _, ok := a.bestDonor(); ok {
			a.askForSpaceLocked()
		}
	}
	if a.cfg.ReclaimAfter > 0 && a.gwAwaitingEchoLocked() && a.gwEchoAsked != a.gw.version {
		a.gwEchoAsked = a.gw.version
		msg := a.stateMsgLocked()
		msg[0] = msgEchoReq
		a.outbox = append(a.outbox, outMsg{msg: msg})
	}
}

// needsSpaceLocked says whether this peer asks for space: it has no
// gateway yet (its node cannot be reached at all), owns no space, or a pod
// waits for an address for want of one, not for lease echoes
// (leaseWaitLocked): asking for space on such a wait made every one a
// donation, and a mesh allocating steadily cut its ring into hundreds of
// runs within a minute.
func (a *Allocator) needsSpaceLocked() bool {
	_, hasGw := a.gatewayOff()
	return !hasGw || len(a.st.ring.owned(a.cfg.Self)) == 0 || a.waiting > 0 && !a.leaseWaitLocked()
}

// leaseWaitLocked says whether a pod waits for the lease echoes of a free
// address (automatic reclaim on, the pool used up) rather than for space.
func (a *Allocator) leaseWaitLocked() bool {
	return a.cfg.ReclaimAfter > 0 && a.waiting > 0 && a.freeCount() > 0
}

// askForSpaceLocked sends a space request to the best donor, at most once
// every askEvery ticks.
func (a *Allocator) askForSpaceLocked() {
	if a.st.seed.isZero() {
		return
	}
	if a.lastAsk != 0 && a.tick < a.lastAsk+askEvery {
		return
	}
	donors := a.donorsLocked()
	if len(donors) == 0 {
		// No reachable peer is known to have free space, but what we know
		// of them may predate a heal or their releases. One peer's state
		// carries what it knows of everyone, so ask one at a time, in
		// turn (an echo request is answered with the state), rather than
		// flooding a full cluster with broadcasts.
		if others := a.reachableOthersLocked(); len(others) > 0 {
			a.lastAsk = a.tick + 1
			msg := a.stateMsgLocked()
			msg[0] = msgEchoReq
			a.outbox = append(a.outbox, outMsg{to: others[int(a.tick)%len(others)], msg: msg})
		}
		return
	}
	a.lastAsk = a.tick + 1
	msg := appendString([]byte{msgAsk}, a.cfg.Self)
	alt := donors[1:min(1+askFallbacks, len(donors))]
	a.outbox = append(a.outbox, outMsg{to: donors[0], msg: msg, alt: alt})
}

// askFallbacks is how many further donors a space request is sent to, one
// after the other, when sending to the best one fails.
const askFallbacks = 2

// liveLocked says whether name is a live member: this peer, a member in
// the view SetMembers last gave, or, fresher, one the membership itself
// knows live (Config.IsMember). A node that just joined asks for space at
// once; its donor's SetMembers may not have run yet, and a request dropped
// for that reason was only retried askEvery ticks later (about 3 s of a new
// node's time to its first packet). The bounds' unknown-peer rule asks the
// same question (isMember).
func (a *Allocator) liveLocked(name string) bool {
	return name == a.cfg.Self || a.members[name] || a.cfg.IsMember != nil && a.cfg.IsMember(name)
}

// maxHeldAsks bounds the space requests kept for requesters not yet known
// live (holdAskLocked).
const maxHeldAsks = 16

// holdAskLocked keeps a space request from a name the membership does not
// know live yet, for askEvery ticks. A joining node asks as soon as it has
// joined one member, and a donor that learns of it a moment later through
// gossip would otherwise drop the request: the node asked again only
// askEvery ticks later (about 3 s of a new node's time to its first
// packet, measured in bench part 7). answerHeldAsksLocked donates as soon
// as the membership reports the requester live; the rule that space goes
// only to a live member is unchanged.
func (a *Allocator) holdAskLocked(who string) {
	if _, ok := a.heldAsks[who]; !ok && len(a.heldAsks) >= maxHeldAsks {
		return // the requester asks again after askEvery ticks
	}
	if a.heldAsks == nil {
		a.heldAsks = map[string]uint64{}
	}
	a.heldAsks[who] = a.tick
}

// answerHeldAsksLocked answers the held requests whose requester is now
// live and forgets those older than askEvery ticks (asked again since).
func (a *Allocator) answerHeldAsksLocked() {
	// In name order, so that a simulation replays.
	for _, who := range slices.Sorted(maps.Keys(a.heldAsks)) {
		t := a.heldAsks[who]
		switch {
		case a.tick > t+askEvery:
			delete(a.heldAsks, who)
		case a.liveLocked(who):
			delete(a.heldAsks, who)
			a.donateLocked(who)
		}
	}
}

// donateLocked answers a space request: give the upper half of the largest
// run of free addresses. Only the owner gives its space away, bumping the
// version of every address given (single writer), and it never gives
// addresses in use, reserved by others, in its lease pool or its overlay
// address, so the receiver can use all of it at once.
func (a *Allocator) donateLocked(to string) {
	// Only to a live member: space given to a name nobody runs is lost
	// until an rmpeer.
	if to == a.cfg.Self || a.st.seed.isZero() {
		return
	}
	if !a.liveLocked(to) {
		a.holdAskLocked(to)
		return
	}
	// A recovering peer sends no state (I6), and the requester needs ours
	// to learn of the donation: let another donor answer.
	if a.recovering {
		return
	}
	free := a.freeCount()
	if free == 0 || (free == 1 && a.waiting > 0) {
		return
	}
	a.releasePoolForDonationLocked()
	run, ok := a.largestFreeRun()
	if !ok {
		return
	}
	give := span{run.start + run.len()/2, run.end}
	before := a.st.ring
	a.st.ring = a.st.ring.update(give.start, give.end, func(e entry) entry {
		return entry{Version: e.Version + 1, Owner: to}
	})
	a.publishLocked()
	if err := a.saveLocked(); err != nil {
		// Not durable: undo, or a restart would make us own it again while
		// the requester already uses it.
		a.log.Error("donation not recorded, cancelled", "to", to, "err", err)
		a.st.ring = a.st.ring.update(give.start, give.end, func(e entry) entry {
			return entry{Version: e.Version - 1, Owner: a.cfg.Self}
		})
		a.publishLocked()
		return
	}
	a.log.Info("gave space", "to", to, "cidrs", spanCIDRs(a.cfg.Range, give))
	// The requester gets the whole state, everyone else the change.
	a.outbox = append(a.outbox, outMsg{to: to, msg: a.stateMsgLocked()})
	a.announceLocked(before)
	a.ringChangedLocked()
}

// largestFreeRun finds the longest run of owned addresses none of which is
// blocked; ties go to the lowest. It works on the sorted blocked offsets, so
// its cost follows the number of allocations, not the size of the space.
func (a *Allocator) largestFreeRun() (span, bool) {
	var stops []uint64
	if ov, ok := a.gatewayOff(); ok {
		stops = append(stops, ov)
	}
	stops = append(stops, 0, a.st.ring.size-1) // network/broadcast: usable() may keep them, blocking them is harmless
	for off := range a.byOff {
		stops = append(stops, off)
	}
	stops = append(stops, a.reserved()...)
	for off := range a.pool {
		stops = append(stops, off)
	}
	slices.Sort(stops)
	stops = slices.Compact(stops)
	var best span
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		start := sp.start
		i, _ := slices.BinarySearch(stops, sp.start)
		for ; i < len(stops) && stops[i] < sp.end; i++ {
			if stops[i]-start > best.len() {
				best = span{start, stops[i]}
			}
			start = stops[i] + 1
		}
		if sp.end > start && sp.end-start > best.len() {
			best = span{start, sp.end}
		}
	}
	return best, best.len() > 0
}

// reachableOthersLocked returns the live members other than this peer,
// sorted so that the choice among them is deterministic.
func (a *Allocator) reachableOthersLocked() []string {
	var out []string
	for name := range a.members {
		if name != a.cfg.Self {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
