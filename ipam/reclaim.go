package ipam

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Reclaiming the space of dead peers. Three ways, from the strongest
// operator assertion to none (docs/ipam.md argues each):
//
//   - RemovePeer: the operator says the peer is dead; its space goes to this
//     peer at once (version+1, owner self).
//   - RemovePeerAuthoritative: an authority (Kubernetes Node deletion) says
//     the peer is gone for good. Every peer may call it concurrently: they
//     all write the same tombstone (version+1, no owner, dead=name), and the
//     tombstoned space goes to exactly one heir, the owner of the address
//     just below it.
//   - automatic, after ReclaimAfter of silence: a tombstone like the
//     authoritative one, but reclaimVersionJump versions up; the heir uses
//     the space only once a reclaim quorum of voters has echoed the
//     tombstone, and the silent peer (which may only be partitioned) only
//     allocates addresses a lease quorum (ceil(N/2)) has seen it hold.
//     Quorum intersection then guarantees one of them sees the other.

// RemovePeer tombstones every range of the named (dead) peer, whose heirs
// (the owners of the addresses below) then claim them, and drops the dead
// peer's reservations; it returns how many ranges it tombstoned. The
// caller checks that the peer is really dead: running it for a live but
// partitioned peer is an operator error that the held-address
// reservations soften but cannot undo (see docs/ipam.md). Two peers may
// run it at once: they write the same tombstones. Persists and
// broadcasts; safe for concurrent use.
func (a *Allocator) RemovePeer(name string) (int, error) {
	return a.removePeer(name, false)
}

// RemovePeerAuthoritative tombstones the ranges of a peer known to be gone
// for good (its Kubernetes Node was deleted). Unlike RemovePeer it is safe
// for any number of peers to call it concurrently for the same name: they
// all write identical tombstones and a single deterministic heir takes the
// space. Where the removal of name is already merged here (no range of
// name's left, its info removed) it does nothing and returns 0. Returns
// the number of ranges tombstoned. Persists and broadcasts; safe for
// concurrent use.
func (a *Allocator) RemovePeerAuthoritative(name string) (int, error) {
	return a.removePeer(name, true)
}

// ownedOrTombstoned matches the entries of name's space: those it owns and
// its tombstones that no heir has claimed yet.
func ownedOrTombstoned(name string) func(entry) bool {
	return func(e entry) bool { return e.Owner == name || (e.Owner == "" && e.Dead == name) }
}

// errUnknownPeer: rmpeer of a name this peer never heard of.
var errUnknownPeer = errors.New("ipam: unknown peer")

func (a *Allocator) removePeer(name string, authoritative bool) (int, error) {
	if name == a.cfg.Self {
		return 0, fmt.Errorf("ipam: refusing to remove this peer (%s) from itself", name)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, ErrClosed
	}
	info, known := a.st.peers[name]
	if authoritative && known && info.Removed && len(a.st.ring.owned(name)) == 0 {
		// Another node's removal reached this one first: its tombstones
		// and removal are already merged here, and writing them again
		// would only send one more whole state to every member (the
		// daemon staggers the nodes' removals so that usually only the
		// first one writes: docs/scale.md).
		a.mu.Unlock()
		return 0, nil
	}
	before := a.st.ring
	// Tombstones, whoever writes them and whatever the kind of removal:
	// two removals of one peer write the same entries, so an rmpeer run on
	// two peers at once cannot leave two owners of one run, and a
	// tombstone loses to a transfer of the same version that its writer
	// had not heard of (docs/ipam.md, "mesh rmpeer NAME"). The heir, the
	// owner of the address below each run, claims it (claimOrphansLocked).
	var n int
	a.st.ring, n = a.st.ring.rewrite(
		func(e entry) bool { return e.Owner == name },
		func(e entry) entry { return entry{Version: e.Version + 1, Dead: name} })
	if !known && n == 0 {
		a.mu.Unlock()
		return 0, fmt.Errorf("%w %q", errUnknownPeer, name)
	}
	// Writing the dead peer's info breaks its single-writer rule on
	// purpose. The new epoch makes the removal beat any heartbeat of the
	// peer, even one this peer has not heard of yet: otherwise a late
	// heartbeat would bring back the reservations of a dead peer, whose
	// addresses the new owner may already have handed out again (a false
	// conflict, and addresses leaked for good). If the peer is in fact
	// alive it republishes at this epoch with a higher version and its
	// reservations come back.
	removed := info.removedBy()
	if authoritative {
		// A deleted Node's daemon may still run, and its pods with it,
		// for a while: its last known Held keeps reserving (I5) until an
		// operator's rmpeer, so the heir never hands out those addresses
		// (docs/ipam.md, "Kubernetes Node deletion").
		removed.Held = info.Held
	}
	// Signed by this peer as writer: receivers accept a removal signed by
	// any node with a bound identity (docs/ipam.md, "Signed peer infos").
	a.st.peers[name] = a.signLocked(name, removed)
	a.staleReservedLocked()
	a.log.Warn("removed peer", "peer", name, "ranges", n, "authoritative", authoritative)
	a.afterRingChangeLocked()
	a.publishLocked()
	err := a.saveLocked()
	if a.recovering {
		// The voter set shrank, so a lease quorum of it may have answered
		// already: when most voters died, removing them is what ends
		// recovery (I6), and recovering broadcasts the state. Until then a
		// broadcast would be held back anyway.
		a.checkRecoveredLocked()
	} else {
		a.announceLocked(before, name)
	}
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
	if err != nil {
		return n, err
	}
	return n, nil
}

// claimOrphansLocked makes this peer the heir of tombstoned space that
// follows space it owns. The heir of a run of tombstones is the owner of the
// address just below it: at any moment at most one peer believes it owns a
// given address, and because a transfer travels in a whole state or in a
// delta that holds the run after it (delta.go), a peer that later comes to
// own that address also learns the earlier heir's claim.
func (a *Allocator) claimOrphansLocked() bool {
	if a.recovering {
		return false // no reclaim on stale knowledge (I6)
	}
	changed := false
	before := a.st.ring
	for _, run := range a.st.ring.spans(func(e entry) bool { return e.Owner == "" && e.Dead != "" }) {
		if !a.heirOfLocked(run) {
			continue
		}
		a.st.ring = a.st.ring.update(run.start, run.end, func(e entry) entry {
			return entry{Version: e.Version + 1, Owner: a.cfg.Self, Dead: e.Dead}
		})
		a.log.Info("inheriting space of removed peer", "cidrs", spanCIDRs(a.cfg.Range, run))
		changed = true
	}
	if a.reclaimContestedLocked() {
		changed = true
	}
	if a.confirmClaimsLocked() {
		changed = true
	}
	if changed {
		a.staleReservedLocked()
		a.announceLocked(before)
	}
	return changed
}

// confirmClaimsLocked turns claims into plain ownership once safe: once a
// reclaim quorum holds the claim itself (see liveness.observe). With
// automatic reclaim off, a claim of a peer removed by an operator or an
// authority is confirmed at once: there is no automatic tombstone, so no
// other heir of the same run. With it on, a removal does not skip the
// wait: the run may have been inherited, unseen, by an heir that was
// itself reclaimed later (docs/ipam.md, "An heir reclaimed in turn"), and
// only the quorum tells.
func (a *Allocator) confirmClaimsLocked() bool {
	changed := false
	for i, s := range a.st.ring.segs {
		if !s.e.isClaim() || s.e.Owner != a.cfg.Self {
			continue
		}
		if a.claimNeedsEchoLocked(s.e) && !a.claimEchoedLocked(s.start, s.e.Version) {
			continue
		}
		end := a.st.ring.end(i)
		a.st.ring = a.st.ring.update(s.start, end, func(e entry) entry {
			return entry{Version: e.Version + 1, Owner: a.cfg.Self}
		})
		changed = true
		// Segments shifted; the next Tick or merge picks up the rest.
		break
	}
	return changed
}

// heirOfLocked says whether this peer is the heir of run: the owner
// (plain or claiming) of the address just below it, cyclically. A run
// covering the whole ring has no heir.
func (a *Allocator) heirOfLocked(run span) bool {
	size := a.st.ring.size
	if run.len() == size {
		return false
	}
	return a.st.ring.get((run.start+size-1)%size).Owner == a.cfg.Self
}

// contestedClaimantLocked says whether this peer claims the contested
// run: its heir (heirOfLocked), or, in a ring where no entry has an owner
// left (every run contested or tombstoned: nobody is anyone's heir, and
// nothing would ever change), the first by name of the voters that are not
// joining and that the membership counts live, this peer included. Every
// peer picks the same one once their views of the membership agree; while
// they differ two peers may claim at once, and their claims merge into
// contested again, to be claimed once more ReclaimAfter later. Who claims
// decides nothing else: the claim's safety rests on its version jump and
// its reclaim quorum (below), whoever writes it.
func (a *Allocator) contestedClaimantLocked(run span) bool {
	if a.heirOfLocked(run) {
		return true
	}
	if a.st.ring.hasOwner() {
		return false
	}
	me := a.st.peers[a.cfg.Self]
	if me.Removed || me.Joining {
		return false
	}
	for name, p := range a.st.peers {
		if name < a.cfg.Self && a.members[name] && !p.Removed && !p.Joining {
			return false
		}
	}
	return true
}

// reclaimContestedLocked claims contested runs (two heirs' claims merged,
// see contested) for this peer when it owns the address just below (or is
// the fallback claimant of contestedClaimantLocked) and the run has stayed
// contested for ReclaimAfter in its view (at once with automatic reclaim
// off): neither heir confirmed in that time, or its confirmation would
// have replaced the contested entry.
//
// The claim is written reclaimVersionJump versions up, with this peer as
// its own dead peer (the run's earlier dead peer is not in the contested
// entry), and confirmed like any claim once a reclaim quorum holds it.
// That is the automatic reclaim's argument with the unknown heir that may
// have confirmed unseen as the silent peer: its allocations there are
// leased (every peer runs a pool when reclaim is on), so each was echoed
// by a lease quorum, which shares a peer Y with this claim's quorum. If Y
// held the allocation first, this peer sees it in Held and skips it (I5);
// if Y held this claim first, the jump makes it beat that heir's
// confirmation and every transfer after it, so that heir loses the run
// before it allocates there.
func (a *Allocator) reclaimContestedLocked() bool {
	now := a.cfg.Now()
	runs := a.st.ring.spans(func(e entry) bool { return e.isContested() })
	seen := map[uint64]bool{}
	var n uint64
	changed := false
	for _, run := range runs {
		n += run.len()
		seen[run.start] = true
		since, ok := a.liveness.contestedAt[run.start]
		if !ok {
			since = now
			a.liveness.contestedAt[run.start] = now
		}
		if now.Sub(since) < a.cfg.ReclaimAfter || !a.contestedClaimantLocked(run) {
			continue
		}
		if a.cfg.ReclaimAfter > 0 && !a.inMajorityLocked() {
			continue // a minority must not take space from the majority
		}
		a.st.ring = a.st.ring.update(run.start, run.end, func(e entry) entry {
			return entry{Version: e.Version + reclaimVersionJump, Owner: a.cfg.Self, Dead: a.cfg.Self}
		})
		a.log.Warn("claiming contested space", "cidrs", spanCIDRs(a.cfg.Range, run))
		changed = true
	}
	for start := range a.liveness.contestedAt {
		if !seen[start] {
			delete(a.liveness.contestedAt, start)
		}
	}
	if n == 0 || changed {
		delete(a.problems, "contested")
	} else {
		when := "after --ipalloc-reclaim-after"
		if a.cfg.ReclaimAfter <= 0 {
			when = "at once"
		}
		who := "the owner of the address below them"
		if !a.st.ring.hasOwner() {
			who = "the first live voter by name (no address has an owner)"
		}
		a.problem("contested", fmt.Sprintf("%d addresses were claimed by two heirs at once (contested): nobody allocates there until %s claims them again, %s", n, who, when))
	}
	return changed
}

// claimNeedsEchoLocked says whether claim e waits for a reclaim quorum to
// hold it before it is confirmed (see confirmClaimsLocked).
func (a *Allocator) claimNeedsEchoLocked(e entry) bool {
	return a.cfg.ReclaimAfter > 0 || !a.st.peers[e.Dead].Removed
}

// pruneClaimEchoesLocked forgets echo records of claims that no longer
// exist (confirmed, or lost to another entry).
func (a *Allocator) pruneClaimEchoesLocked() {
	for k := range a.liveness.claimEcho {
		if e := a.st.ring.get(k.start); e.Owner != a.cfg.Self || e.Dead == "" || e.Version != k.version {
			delete(a.liveness.claimEcho, k)
		}
	}
}

func (a *Allocator) claimEchoedLocked(start, version uint64) bool {
	return a.claimEchoCountLocked(start, version) >= a.reclaimQuorumLocked()
}

// claimEchoCountLocked counts the voters, this peer included unless it is
// joining, that hold our claim of version at start.
func (a *Allocator) claimEchoCountLocked(start, version uint64) int {
	n := len(a.liveness.claimEcho[claimKey{start, version}])
	if a.votesLocked() {
		n++
	}
	return n
}

// reclaimVersionJump is how far an automatic tombstone raises the version
// of the entries it overwrites. Its writer breaks I1: the silent peer may
// have given that space away meanwhile, and the receiver may have passed
// it on, each transfer one version up, before the tombstone reached them.
// With a tombstone of version+1 such a chain tied with or outran the
// tombstone and its claim, so a state that had never seen the tombstone
// counted as its echo, and the chain's last owner kept allocating under
// the heir (seed 36 of the restart soak). Jumping 2^16 versions puts the
// tombstone above every transfer its writer has not seen (no offset
// changes hands 65536 times inside one partition), so only a state that
// holds the tombstone, or what was written on top of it, reaches its
// version: the echo count is exact and the quorum argument of
// docs/ipam.md holds for every peer that allocates in that space, not
// only for the silent one. It stays well under maxRingStep, so a peer
// (of this release or the previous one) that missed up to
// maxRingStep/reclaimVersionJump - 1 reclaims of the same address still
// merges the ring (TestReclaimJumpWithinRingStep).
const reclaimVersionJump = 1 << 16

// autoReclaimLocked tombstones the space of leased peers silent for
// ReclaimAfter, provided this peer hears from a majority (a minority side
// of a partition must not strip the majority of its space).
func (a *Allocator) autoReclaimLocked() bool {
	if a.cfg.ReclaimAfter <= 0 || a.st.seed.isZero() || a.recovering || !a.inMajorityLocked() {
		return false
	}
	// A peer that owns nothing (itself reclaimed while away) must not
	// reclaim others: otherwise peers could tombstone each other until no
	// owner is left to inherit anything.
	if len(a.st.ring.owned(a.cfg.Self)) == 0 {
		return false
	}
	now := a.cfg.Now()
	changed := false
	for _, name := range slices.Sorted(maps.Keys(a.st.peers)) {
		p := a.st.peers[name]
		if name == a.cfg.Self || p.Removed || !p.Leased {
			continue
		}
		silence, silent := a.silentLocked(name, now)
		if !silent {
			continue
		}
		runs, waiting := a.reclaimableLocked(name)
		for _, r := range runs {
			a.st.ring = a.st.ring.update(r.start, r.end, func(e entry) entry {
				return entry{Version: e.Version + reclaimVersionJump, Dead: name}
			})
		}
		switch {
		case len(runs) > 0:
			a.problem("reclaim:"+name, fmt.Sprintf("peer %s silent for %v: its free space is being reclaimed; its pods' addresses stay reserved", name, silence.Round(1e9)))
			changed = true
		case waiting != "":
			a.problem("reclaim:"+name, fmt.Sprintf("peer %s silent for %v: its space is reclaimed once a reclaim quorum vouches for it (%s)", name, silence.Round(1e9), waiting))
		}
	}
	return changed
}

// reclaimableLocked lists the runs of name, a silent peer, that this peer
// may tombstone: every run it owns or claims, except, once this peer
// lists vouches (vouch.go), a run it owns as a plain owner that a reclaim
// quorum does not vouch for yet; waiting then says how many voters vouch
// for the first such run. This peer's switch decides, not name's info as
// this peer last saw it: name may have turned its lists on while cut off,
// and then holds the reclaim of its space to vouches
// (TestReclaimedPodKeepsTraffic found it: a node cut off seconds after
// the ring was seeded listed its space and read vouches alone, and
// refused its own reclaim for good).
func (a *Allocator) reclaimableLocked(name string) (runs []span, waiting string) {
	protected := a.st.peers[a.cfg.Self].ListsVouches
	quorum := a.reclaimQuorumLocked()
	for i, s := range a.st.ring.segs {
		if s.e.Owner != name {
			continue
		}
		run := span{s.start, a.st.ring.end(i)}
		if protected && s.e.Dead == "" {
			if n, _ := a.vouchesLocked(nil, name, run); n < quorum {
				if waiting == "" {
					waiting = fmt.Sprintf("%d of %d voters vouch", n, quorum)
				}
				continue
			}
		}
		runs = append(runs, run)
	}
	return runs, waiting
}

// ErrNotYet: ReleaseRemovedHeld of a peer whose space has not all reached
// its heir yet.
var ErrNotYet = errors.New("ipam: not yet")

// RemovedHolding lists the peers removed with their reservations kept
// (RemovePeerAuthoritative: a deleted Kubernetes Node's), sorted: the
// candidates for ReleaseRemovedHeld. Non-blocking; safe for concurrent use.
func (a *Allocator) RemovedHolding() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for name, p := range a.st.peers {
		if p.removedHolding() && name != a.cfg.Self {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// ReleaseRemovedHeld drops the reservations a removed peer keeps (a deleted
// Kubernetes Node's last known Held, kept by RemovePeerAuthoritative: I5)
// once the authority says its pods are gone: the daemon calls it when the
// API lists no pod on that Node and the node is no live member
// (docs/ipam.md, "Kubernetes Node deletion"). It writes the peer's removed
// info again at the next epoch with nothing held, as rmpeer would, but
// leaves the ring alone: it refuses (ErrNotYet) while the peer still owns
// space or tombstoned space of it waits for its heir, so any number of
// nodes may call it at once and write the same info. Returns how many
// addresses it released: 0 when the peer holds none (already released).
// Persists; the info spreads by push/pull. Safe for concurrent use.
func (a *Allocator) ReleaseRemovedHeld(name string) (int, error) {
	if name == a.cfg.Self {
		return 0, fmt.Errorf("ipam: refusing to release this peer's (%s) own reservations", name)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, ErrClosed
	}
	info, known := a.st.peers[name]
	switch {
	case !known:
		a.mu.Unlock()
		return 0, fmt.Errorf("%w %q", errUnknownPeer, name)
	case !info.Removed:
		a.mu.Unlock()
		return 0, fmt.Errorf("ipam: peer %q is not removed: only a removed peer's reservations are released", name)
	case !info.removedHolding():
		a.mu.Unlock()
		return 0, nil
	case a.recovering:
		a.mu.Unlock()
		return 0, fmt.Errorf("%w: this peer is recovering its state (I6)", ErrNotYet)
	}
	if len(a.st.ring.spans(ownedOrTombstoned(name))) > 0 {
		a.mu.Unlock()
		return 0, fmt.Errorf("%w: peer %q still owns space, or its heir has not claimed it", ErrNotYet, name)
	}
	a.st.peers[name] = a.signLocked(name, info.removedBy())
	a.staleReservedLocked()
	n := len(info.Held)
	a.log.Warn("released the reservations of a removed peer", "peer", name, "addresses", n)
	a.publishLocked()
	err := a.saveLocked()
	out := a.takeOutbox()
	a.mu.Unlock()
	a.flush(out)
	return n, err
}
