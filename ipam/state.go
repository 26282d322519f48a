package ipam

import (
	"bytes"
	"cmp"
	"slices"
)

// seed identifies one bootstrap decision. Two rings seeded independently
// (two clusters started apart, then connected) have different seeds; the
// larger seed wins so every peer converges on one ring. More initial members
// wins first so that the bigger cluster keeps its layout.
type seed struct {
	Members uint64 // number of peers the first split was made for; 0 = unseeded
	ID      uint64
}

func compareSeed(a, b seed) int {
	if c := cmp.Compare(a.Members, b.Members); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

func (s seed) isZero() bool { return s.Members == 0 }

// peerInfo is what a peer publishes about itself. Only that peer writes it
// (rmpeer excepted, see Removed), versioned by (Epoch, Version), so the
// merge keeps the latest.
type peerInfo struct {
	// Epoch counts removals: rmpeer writes Removed at Epoch+1, so the
	// removal beats every heartbeat the peer published before it, including
	// ones the remover had not heard of yet (a dead peer's last heartbeats
	// may still be travelling). A peer that finds itself removed while alive
	// republishes at the removal's epoch with a higher Version.
	Epoch uint64
	// Version grows with every publication; with automatic reclaim on, a
	// peer publishes at every tick, and it is also the heartbeat.
	Version uint64
	ID      string
	// Free is how many addresses the peer could still allocate; peers out of
	// space ask the one with the most.
	Free uint64
	// Leased says the peer allocates only from addresses a lease quorum has
	// seen it hold (automatic reclaim is on); only such peers may be
	// reclaimed automatically.
	Leased bool
	// Removed is written by rmpeer on behalf of a dead peer: its Held no
	// longer reserves anything. A live peer that sees it re-asserts itself
	// with a higher version.
	Removed bool
	// Joining says the peer joined a running mesh (with automatic reclaim
	// on) and does not vote yet: it counts in N, but its echoes count
	// towards no quorum until every peer it knows has held its info
	// (docs/ipam.md, "Joining as a voter").
	Joining bool
	// Held lists the offsets this peer's pods hold (and, when Leased, the
	// few it is about to hand out), sorted. No other peer allocates them,
	// whoever owns the space: this is what keeps a pod's address safe when
	// the ring moves under it (independent seeding, an rmpeer of a peer that
	// was only partitioned, a reclaim).
	Held []uint64
	// ListsOwned says the info lists, in Owned, the space the peer owns
	// (docs/ipam.md, "Signed ring transfers"): set by a peer once every
	// member reads the list, and from then on in all its infos.
	ListsOwned bool
	// Owned is the space the peer owns as a plain owner (no claim, no
	// tombstone) in its own ring when it wrote the info, sorted and
	// disjoint. A receiver takes a ring entry that moves such a peer's
	// space to another only once the peer's newest info no longer lists
	// it (releaseRuleLocked): a transfer needs its previous owner's word.
	Owned []span
	// ListsAcks says the info lists, in Acks, the removals whose
	// tombstones the peer holds (docs/ipam.md, "Dropping tombstones"):
	// set by a peer once every member reads the list, and from then on in
	// all its infos.
	ListsAcks bool
	// Acks are the removals (a peer's name and the epoch of its Removed
	// info) whose tombstones this peer holds, or dropped not long ago,
	// sorted by name: a tombstone is dropped once every peer that counts
	// has acknowledged it (tombstone.go).
	Acks []ack
	// ListsVouches says the info lists, in Vouches, the silent peers this
	// peer vouches for (docs/ipam.md, "Vouched reclaims"): set by a peer
	// once every member reads the list, and from then on in all its
	// infos. It also marks the peer's own space as protected by vouches:
	// with automatic reclaim on, a receiver takes a reclaim of the space
	// such a peer lists only with the vouches of a majority of voters.
	ListsVouches bool
	// Vouches are the peers this peer found silent for ReclaimAfter, each
	// with the runs it owned in this peer's ring then, sorted by name: a
	// vouch stays while it may be needed, and a grace after
	// (ownVouchesLocked).
	Vouches []vouch
	// Writer is the node whose identity signed this info, Sig its
	// signature of infoSigBytes: the peer itself, or for a Removed info
	// the node that ran rmpeer or saw the Node deletion (docs/ipam.md,
	// "Signed peer infos"). Both empty when unsigned: without
	// Config.Identities, or learnt from a release without signatures.
	Writer string
	Sig    []byte
}

// joining says whether the peer is a joiner: it said so, and no removal
// has replaced its info since.
func (p peerInfo) joining() bool { return p.Joining && !p.Removed }

// removedHolding says whether the peer was removed with its reservations
// kept (a deleted Kubernetes Node's last Held, I5), which still reserve.
func (p peerInfo) removedHolding() bool { return p.Removed && len(p.Held) > 0 }

// removedBy is info as another node writes a removal of its peer (rmpeer,
// a Node deletion, a release of its reservations): at the next epoch, so
// that it beats every heartbeat of the peer, holding nothing; the caller
// adds what must stay held.
func (p peerInfo) removedBy() peerInfo {
	return peerInfo{Epoch: p.Epoch + 1, Version: p.Version + 1, ID: p.ID, Removed: true}
}

func comparePeerInfo(a, b peerInfo) int {
	if c := cmp.Compare(a.Epoch, b.Epoch); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Version, b.Version); c != 0 {
		return c
	}
	if c := cmp.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Free, b.Free); c != 0 {
		return c
	}
	if c := cmpBool(a.Leased, b.Leased); c != 0 {
		return c
	}
	if c := cmpBool(a.Removed, b.Removed); c != 0 {
		return c
	}
	if c := cmpBool(a.Joining, b.Joining); c != 0 {
		return c
	}
	if c := slices.Compare(a.Held, b.Held); c != 0 {
		return c
	}
	if c := cmpBool(a.ListsOwned, b.ListsOwned); c != 0 {
		return c
	}
	if c := slices.CompareFunc(a.Owned, b.Owned, compareSpan); c != 0 {
		return c
	}
	if c := cmpBool(a.ListsAcks, b.ListsAcks); c != 0 {
		return c
	}
	if c := slices.CompareFunc(a.Acks, b.Acks, compareAck); c != 0 {
		return c
	}
	if c := cmpBool(a.ListsVouches, b.ListsVouches); c != 0 {
		return c
	}
	if c := slices.CompareFunc(a.Vouches, b.Vouches, compareVouch); c != 0 {
		return c
	}
	// Last, so that the order of contents is the previous release's and
	// a signed copy of an info beats an unsigned one; ties between two
	// writers of the same removal are broken the same way everywhere.
	if c := cmp.Compare(a.Writer, b.Writer); c != 0 {
		return c
	}
	return bytes.Compare(a.Sig, b.Sig)
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// state is the replicated CRDT: a seed with its ring, plus the peer table.
// Join is lexicographic on the seed (a larger seed replaces the ring
// wholesale), address-wise max within one seed, and per-peer max of infos.
type state struct {
	seed  seed
	ring  ring
	peers map[string]peerInfo
}

func newState(size uint64) state {
	return state{ring: newRing(size), peers: map[string]peerInfo{}}
}

func (s state) clone() state {
	c := state{seed: s.seed, ring: s.ring.clone(), peers: make(map[string]peerInfo, len(s.peers))}
	for k, v := range s.peers {
		c.peers[k] = v
	}
	return c
}

// join returns the least upper bound of s and o; neither is modified.
func join(s, o state) state {
	out := state{peers: make(map[string]peerInfo, max(len(s.peers), len(o.peers)))}
	switch c := compareSeed(s.seed, o.seed); {
	case c > 0:
		out.seed, out.ring = s.seed, s.ring.clone()
	case c < 0:
		out.seed, out.ring = o.seed, o.ring.clone()
	default:
		out.seed, out.ring = s.seed, joinRing(s.ring, o.ring)
	}
	for k, v := range s.peers {
		out.peers[k] = v
	}
	for k, v := range o.peers {
		if cur, ok := out.peers[k]; !ok || comparePeerInfo(v, cur) > 0 {
			out.peers[k] = v
		}
	}
	return out
}

func stateEqual(s, o state) bool {
	if s.seed != o.seed || !s.ring.equal(o.ring) || len(s.peers) != len(o.peers) {
		return false
	}
	for k, v := range s.peers {
		w, ok := o.peers[k]
		if !ok || comparePeerInfo(v, w) != 0 {
			return false
		}
	}
	return true
}

// seededRing is the deterministic first split of a bootstrap decision: the
// range cut into len(members) near-equal consecutive parts, in name order.
// Every peer that learns the decision computes the very same ring.
func seededRing(size uint64, members []string) ring {
	names := slices.Clone(members)
	slices.Sort(names)
	names = slices.Compact(names)
	r := ring{size: size}
	n := uint64(len(names))
	for i, name := range names {
		start := size * uint64(i) / n
		if k := len(r.segs); k > 0 && r.segs[k-1].start == start {
			// More members than addresses: the later name gets nothing.
			continue
		}
		r.segs = appendSeg(r.segs, start, entry{Version: 1, Owner: name})
	}
	return r
}
