package ipam

import (
	"maps"
	"net/netip"
	"slices"
)

// PeerHeld is what one peer holds in space the ring does not give it.
type PeerHeld struct {
	Peer  string
	Addrs []netip.Addr // sorted
}

// HeldOutsideOwned lists, per peer (sorted by name), the addresses that
// peer holds where the ring names another owner or none: pods, and its
// gateway, that stayed when the space under them moved (an automatic
// reclaim of a peer that was only cut off, an rmpeer of a live peer, a lost
// seeding clash, a Node deletion while the node ran). I5 keeps such an
// address from being allocated again; the data plane, which otherwise
// routes by ownership, routes it to its holder as a host route
// (docs/ipam.md, "Held addresses are routed to their holder").
//
// Ownership here is the ring's Owner whatever its Dead mark, the same
// ownership Ranges reports and the data plane routes by. For this peer the
// list comes from its allocations and its gateway as they are now; for the
// others from their published Held, which may include the few pool
// addresses a leased peer has not dropped yet. An address that two peers
// hold (a conflict, see Status) is left out: it has no one holder to route
// to, and stays routed by ownership. Nothing is listed before the ring is
// seeded.
//
// The result is bounded by the Held lists, that is by the peers' pods.
// Read-only; safe for concurrent use.
func (a *Allocator) HeldOutsideOwned() []PeerHeld {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st.seed.isZero() {
		return nil
	}
	holders := map[uint64][]string{}
	add := func(name string, off uint64) {
		if h := holders[off]; len(h) == 0 || h[len(h)-1] != name {
			holders[off] = append(h, name)
		}
	}
	// Sorted names, and each peer's offsets added in one go, so that a
	// peer listing an offset twice counts once.
	self := slices.Sorted(maps.Keys(a.byOff))
	if gw, ok := a.gatewayOff(); ok {
		self = append(self, gw)
		slices.Sort(self)
	}
	for _, name := range slices.Sorted(maps.Keys(a.st.peers)) {
		held := a.st.peers[name].Held
		if name == a.cfg.Self {
			held = self
		}
		for _, off := range held {
			add(name, off)
		}
	}
	if _, ok := a.st.peers[a.cfg.Self]; !ok {
		for _, off := range self {
			add(a.cfg.Self, off)
		}
	}
	byPeer := map[string][]netip.Addr{}
	for _, off := range slices.Sorted(maps.Keys(holders)) {
		h := holders[off]
		if len(h) != 1 || off >= a.st.ring.size || a.st.ring.get(off).Owner == h[0] {
			continue
		}
		byPeer[h[0]] = append(byPeer[h[0]], offsetAddr(a.cfg.Range, off))
	}
	var out []PeerHeld
	for _, name := range slices.Sorted(maps.Keys(byPeer)) {
		out = append(out, PeerHeld{Peer: name, Addrs: byPeer[name]})
	}
	return out
}
