package ipam

import (
	"maps"
	"slices"
)

// The lease pool, used only when automatic reclaim is on. Such a peer may be
// declared dead while merely partitioned, so it allocates only addresses it
// has already published as held AND that a lease quorum of voters
// (ceil(N/2)) has echoed back (their states carry our info at that version
// or later). A reclaimer's heir in turn waits for a reclaim quorum
// (floor(N/2)+2, reclaimQuorum) to echo its tombstone. The two quorums
// share a peer, whose state carried either our held addresses to the heir
// or the tombstone to us (docs/ipam.md, "automatic reclaim").

// poolSize is how many not-yet-allocated addresses a leased peer keeps
// published ahead of demand, so pods rarely wait for an echo round.
const poolSize = 8

func (a *Allocator) inPool(off uint64) bool {
	_, ok := a.pool[off]
	return ok
}

// leaseHeld adds the pool to the allocated offsets to publish.
func (a *Allocator) leaseHeld(held []uint64) []uint64 {
	if a.cfg.ReclaimAfter <= 0 || len(a.pool) == 0 {
		return held
	}
	held = append(held, slices.Collect(maps.Keys(a.pool))...)
	slices.Sort(held)
	return slices.Compact(held)
}

// leaseAllows says whether off may be handed out now.
func (a *Allocator) leaseAllows(off uint64) bool {
	if a.cfg.ReclaimAfter <= 0 {
		return true
	}
	v, ok := a.pool[off]
	// The pod's gateway must be usable too: a new gateway is a lease of
	// its own, published before the pool but possibly re-chosen after it.
	return ok && v != 0 && v <= a.echoedVersionLocked() && a.gatewayUsableLocked()
}

// leaseRefillPending says whether pool addresses exist that only wait for
// their echo, so Allocate should wait rather than report no space.
func (a *Allocator) leaseRefillPending() bool {
	if a.cfg.ReclaimAfter <= 0 {
		return false
	}
	for off := range a.pool {
		if _, used := a.byOff[off]; !used {
			return true
		}
	}
	return false
}

// refillPoolLocked drops pool addresses that were allocated or are no longer
// ours, and tops the pool up from free owned space.
func (a *Allocator) refillPoolLocked() {
	if a.cfg.ReclaimAfter <= 0 {
		return
	}
	if a.pool == nil {
		a.pool = map[uint64]uint64{}
	}
	for off := range a.pool {
		e := a.st.ring.get(off)
		if _, used := a.byOff[off]; used || e.Owner != a.cfg.Self || e.Dead != "" {
			delete(a.pool, off)
		}
	}
	// A small range must not vanish into pools: keep at most a quarter of
	// our free space there.
	want := min(poolSize, max(1, int(a.freeCount()/4)))
	if len(a.pool) >= want {
		return
	}
	ov, hasOv := a.gatewayOff()
	added := false
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		for off := sp.start; off < sp.end && len(a.pool) < want; off++ {
			if !a.blocked(off, ov, hasOv) && !a.inPool(off) {
				a.pool[off] = 0
				added = true
			}
		}
	}
	if !added {
		return
	}
	a.publishLocked()
	v := a.st.peers[a.cfg.Self].Version
	for off, pv := range a.pool {
		if pv == 0 {
			a.pool[off] = v
		}
	}
}

// askEchoesLocked asks for the echoes something of ours waits for: every
// peer when a quorum's echo is awaited (unechoedLocked), else, while this
// peer is joining, only the peers whose echo its admission still lacks
// (each answers with its whole state: in a large mesh, asking them all
// again every other tick would cost N whole states each time).
func (a *Allocator) askEchoesLocked() {
	var to []string
	switch {
	case a.unechoedLocked():
		to = []string{""} // broadcast
	case !a.votesLocked():
		to = a.joinMissingLocked()
	}
	if len(to) == 0 {
		return
	}
	msg := a.stateMsgLocked()
	msg[0] = msgEchoReq
	for _, name := range to {
		a.outbox = append(a.outbox, outMsg{to: name, msg: msg})
	}
}

// unechoedLocked says whether something of ours waits for a quorum's echo:
// pool addresses or a reclaim claim.
func (a *Allocator) unechoedLocked() bool {
	if a.cfg.ReclaimAfter <= 0 {
		return false
	}
	ev := a.echoedVersionLocked()
	for _, v := range a.pool {
		if v == 0 || v > ev {
			return true
		}
	}
	for _, s := range a.st.ring.segs {
		if s.e.Owner == a.cfg.Self && s.e.Dead != "" {
			return true
		}
	}
	return false
}

// donatableFree is what we advertise: free space minus the pool, which we
// keep for our own pods. When the pool is all that is free and no pod of
// ours waits, the pool is advertised too: donateLocked then gives it up
// (releasePoolForDonationLocked), or on a nearly full range those
// addresses would stay promised to a peer that needs none of them while
// others wait for space (soak seed 31).
//
// Free addresses that no donation gives away (the ring's ends,
// largestFreeRun) are not advertised: a requester would ask this peer for
// them again and again while another peer could give it space (IPv6
// simulation seed 62). This peer's own pods still get them.
func (a *Allocator) donatableFree() uint64 {
	f := a.freeCount()
	f -= min(f, a.keptEndsLocked())
	n := a.unusedPoolLocked()
	if n >= f {
		if a.poolGivableLocked(f, n) {
			return f
		}
		return 0
	}
	return f - n
}

// poolGivableLocked says whether the unused pool (n addresses) may be given
// away: it is all the free space (f), no pod of ours waits for it, and we
// keep some space after giving it. A peer whose whole space is that pool
// would own nothing afterwards and ask for space in turn, so two idle peers
// could pass the same addresses back and forth; it gives the upper half
// only, and keeps its last address.
func (a *Allocator) poolGivableLocked(f, n uint64) bool {
	if a.cfg.ReclaimAfter <= 0 || a.waiting > 0 || f == 0 || n < f {
		return false
	}
	var owned uint64
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		owned += sp.len()
	}
	return owned > f || f >= 2
}

// keptEndsLocked counts the ring's ends (offsets 0 and size-1) that are
// free in this peer's space, not in its pool, and that freeCount counts
// (usable): the addresses largestFreeRun never donates.
func (a *Allocator) keptEndsLocked() uint64 {
	ov, hasOv := a.gatewayOff()
	var n uint64
	for _, off := range slices.Compact([]uint64{0, a.st.ring.size - 1}) {
		e := a.st.ring.get(off)
		_, mine := a.byOff[off]
		_, pooled := a.pool[off]
		held := a.isReserved(off)
		if a.ownsPlain(e) && a.usable(off) && !mine && !pooled && !held && !(hasOv && off == ov) {
			n++
		}
	}
	return n
}

func (a *Allocator) unusedPoolLocked() uint64 {
	n := uint64(0)
	for off := range a.pool {
		if _, used := a.byOff[off]; !used {
			n++
		}
	}
	return n
}

// releasePoolForDonationLocked empties the unused pool when it is all the
// free space and no pod of ours waits, so a space request can be answered.
// Safe: a pool address is handed out only while it is in the pool (and
// owned), so once dropped, and then given away, this peer never allocates
// it; the Held sent with the donation no longer lists it, and the new
// owner leases it anew before using it.
func (a *Allocator) releasePoolForDonationLocked() {
	if !a.poolGivableLocked(a.freeCount(), a.unusedPoolLocked()) {
		return
	}
	for off := range a.pool {
		if _, used := a.byOff[off]; !used {
			delete(a.pool, off)
		}
	}
}
