package ipam

import (
	"maps"
	"net/netip"
	"slices"
)

// Wire is an IPAM state as it travels between peers, in exported types,
// for tests and tools that inspect or craft what a peer sends (the
// hostile-peer test of e2e/ plays a peer holding the mesh key with it).
// DecodeWire and Encode use the one codec of codec.go.
type Wire struct {
	Prefix      netip.Prefix
	Sender      string
	SeedMembers uint64
	SeedID      uint64
	// Ring is the ring's segments in order, the first at offset 0.
	Ring  []WireSeg
	Peers map[string]WirePeer
}

// WireSeg is a run of addresses from Start (an offset in the cluster
// range) to the next segment's start.
type WireSeg struct {
	Start, Version uint64
	Owner, Dead    string
}

// WirePeer is what a peer publishes about itself (see peerInfo).
type WirePeer struct {
	Epoch, Version  uint64
	ID              string
	Free            uint64
	Leased, Removed bool
	Joining         bool
	Held            []uint64 // offsets, sorted
	// ListsOwned says Owned is part of the info: the space the peer owns,
	// sorted, disjoint and not adjacent.
	ListsOwned bool
	Owned      []WireSpan
	// ListsAcks says Acks is part of the info: the removals whose
	// tombstones the peer holds or dropped lately, sorted by name.
	ListsAcks bool
	Acks      []WireAck
	// ListsVouches says Vouches is part of the info: the silent peers it
	// vouches for, sorted by name, each with its runs.
	ListsVouches bool
	Vouches      []WireVouch
	// Writer signed the info (the peer, or the writer of a removal) and
	// Sig is its signature; empty when unsigned. A Wire with any of them
	// set encodes as a signed state (MIP3, MIP7).
	Writer string
	Sig    []byte
}

// WireAck names a removal: the removed peer and the epoch of its removal.
type WireAck struct {
	Name  string
	Epoch uint64
}

// WireVouch is a voter's word that peer Name fell silent while it owned
// Runs, sorted, disjoint and not adjacent (docs/ipam.md, "Vouched
// reclaims").
type WireVouch struct {
	Name string
	Runs []WireSpan
}

// WireSpan is the offsets [Start, End) of the cluster range.
type WireSpan struct{ Start, End uint64 }

// DecodeWire decodes a full state as LocalState returns it.
func DecodeWire(b []byte) (Wire, error) {
	w, err := decodeState(b)
	if err != nil {
		return Wire{}, err
	}
	out := Wire{Prefix: w.prefix, Sender: w.sender, SeedMembers: w.st.seed.Members, SeedID: w.st.seed.ID, Peers: map[string]WirePeer{}}
	for _, s := range w.st.ring.segs {
		out.Ring = append(out.Ring, WireSeg{Start: s.start, Version: s.e.Version, Owner: s.e.Owner, Dead: s.e.Dead})
	}
	for n, p := range w.st.peers {
		var owned []WireSpan
		for _, sp := range p.Owned {
			owned = append(owned, WireSpan{sp.start, sp.end})
		}
		var acks []WireAck
		for _, k := range p.Acks {
			acks = append(acks, WireAck(k))
		}
		var vouches []WireVouch
		for _, v := range p.Vouches {
			wv := WireVouch{Name: v.Name}
			for _, r := range v.Runs {
				wv.Runs = append(wv.Runs, WireSpan{r.start, r.end})
			}
			vouches = append(vouches, wv)
		}
		out.Peers[n] = WirePeer{Epoch: p.Epoch, Version: p.Version, ID: p.ID, Free: p.Free, Leased: p.Leased, Removed: p.Removed, Joining: p.Joining, Held: slices.Clone(p.Held),
			ListsOwned: p.ListsOwned, Owned: owned, ListsAcks: p.ListsAcks, Acks: acks, ListsVouches: p.ListsVouches, Vouches: vouches, Writer: p.Writer, Sig: slices.Clone(p.Sig)}
	}
	return out, nil
}

// Encode returns w as a full state (what MergeRemoteState takes).
func (w Wire) Encode() []byte {
	st := state{seed: seed{w.SeedMembers, w.SeedID}, ring: ring{size: rangeSize(w.Prefix)}, peers: map[string]peerInfo{}}
	for _, s := range w.Ring {
		st.ring.segs = append(st.ring.segs, seg{start: s.Start, e: entry{Version: s.Version, Owner: s.Owner, Dead: s.Dead}})
	}
	signed := false
	for _, n := range slices.Sorted(maps.Keys(w.Peers)) {
		p := w.Peers[n]
		pi := peerInfo{Epoch: p.Epoch, Version: p.Version, ID: p.ID, Free: p.Free, Leased: p.Leased, Removed: p.Removed, Joining: p.Joining, Held: p.Held,
			ListsOwned: p.ListsOwned, ListsAcks: p.ListsAcks, ListsVouches: p.ListsVouches, Writer: p.Writer, Sig: p.Sig}
		for _, sp := range p.Owned {
			pi.Owned = append(pi.Owned, span{sp.Start, sp.End})
		}
		for _, k := range p.Acks {
			pi.Acks = append(pi.Acks, ack(k))
		}
		for _, v := range p.Vouches {
			vv := vouch{Name: v.Name}
			for _, r := range v.Runs {
				vv.Runs = append(vv.Runs, span{r.Start, r.End})
			}
			pi.Vouches = append(pi.Vouches, vv)
		}
		st.peers[n] = pi
		signed = signed || p.Writer != "" || len(p.Sig) > 0
	}
	return encodeStateAs(w.Prefix, w.Sender, st, signed)
}

// Message returns w as the message that broadcasts a state (what
// HandleMessage takes).
func (w Wire) Message() []byte { return append([]byte{msgState}, w.Encode()...) }
