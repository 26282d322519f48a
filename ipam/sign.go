package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Signed peer infos (docs/ipam.md, "Signed peer infos"). Each peer info
// travels with the signature of the node it describes, or for a removal
// of the node that wrote it, so that a holder of the mesh key cannot
// speak for another peer. Signatures are per info, not per message:
// states carry the infos of other peers (causal closure), and an info
// keeps its signature wherever it travels and in the state file. The
// package does no cryptography itself: Config.Identities signs and
// verifies with the node identities of the membership.

// Identities signs this peer's infos and verifies others'. The daemon
// implements it with the node's signing key and the membership's name
// bindings. Its methods are called with the Allocator's lock held: they
// must not call back into the Allocator.
type Identities interface {
	// Sign returns this node's signature of msg (64 bytes, ed25519).
	Sign(msg []byte) []byte
	// Verify checks sig of msg by the identity bound to name: nil, or
	// an error wrapping ErrUnknownSigner when no identity is bound to
	// name, or ErrBadSignature when sig does not verify.
	Verify(name string, msg, sig []byte) error
	// SendsUnsigned says whether name is a live member that does not
	// send signed infos: a node of a release without them, or one that
	// has not yet seen every member able to read them (it says so in its
	// metadata). Its unsigned infos are accepted, as long as none signed
	// was seen of it.
	SendsUnsigned(name string) bool
	// ReadsSigned says whether name is a live member that runs a release
	// with signed infos (it says so in its metadata, whether or not it
	// sends them yet). An unsigned info in a state it sent is a leftover
	// of its switch to signed states: a state encoded just before, or an
	// info it learnt unsigned during the upgrade and relays as it has it.
	// Where such an info is refused it is dropped without being counted.
	ReadsSigned(name string) bool
	// AllRead says whether another member is known, every member (a
	// live one, or one gone only a short while) reads states with
	// signatures, and the membership has settled (a joining node learns
	// the members one by one). From the first true on, this peer sends
	// them for good.
	AllRead() bool
}

// infoSigDomain separates these signatures from every other use of the
// node identity; its version changes with infoSigBytes.
const (
	infoSigDomain = "mesh ipam peer info signature v1"
	sigSize       = 64 // ed25519
)

var (
	// ErrUnknownSigner means no identity is bound to a signer's name.
	ErrUnknownSigner = errors.New("ipam: no identity is bound to the signer's name")
	// ErrBadSignature means a peer info's signature does not verify.
	ErrBadSignature = errors.New("ipam: peer info signature does not verify")
)

// infoSigBytes is what a signature of name's info p covers: a domain, the
// cluster range (an info of one mesh is no info of another), the name,
// the writer and every field of p, each unambiguous (lengths first).
func infoSigBytes(prefix netip.Prefix, name string, p peerInfo) []byte {
	b := make([]byte, 0, 96+len(name)+len(p.Writer)+len(p.ID)+5*len(p.Held))
	b = append(b, infoSigDomain...)
	b = append(b, 0)
	for _, s := range []string{prefix.String(), name, p.Writer, p.ID} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, p.Epoch)
	b = binary.AppendUvarint(b, p.Version)
	b = binary.AppendUvarint(b, p.Free)
	b = append(b, p.flags())
	b = binary.AppendUvarint(b, uint64(len(p.Held)))
	for _, h := range p.Held {
		b = binary.AppendUvarint(b, h)
	}
	if p.ListsOwned {
		// Only with the flag (in the flags byte above), so an info
		// without the list signs the bytes it signed before it existed.
		b = appendOwned(b, p.Owned)
	}
	if p.ListsAcks {
		b = binary.AppendUvarint(b, uint64(len(p.Acks)))
		for _, k := range p.Acks {
			b = binary.AppendUvarint(b, uint64(len(k.Name)))
			b = append(b, k.Name...)
			b = binary.AppendUvarint(b, k.Epoch)
		}
	}
	if p.ListsVouches {
		// Names, not a state's indexes: the signature outlives the
		// state it came in.
		b = appendVouches(b, p.Vouches, func(b []byte, s string) []byte {
			b = binary.AppendUvarint(b, uint64(len(s)))
			return append(b, s...)
		})
	}
	return b
}

// signLocked returns p, written by this peer about name, with this peer's
// signature; without Identities, unsigned.
func (a *Allocator) signLocked(name string, p peerInfo) peerInfo {
	p.Writer, p.Sig = a.writerLocked(), nil
	if p.Writer != "" {
		p.Sig = a.cfg.Identities.Sign(infoSigBytes(a.cfg.Range, name, p))
	}
	return p
}

// writerLocked is the Writer of the infos this peer signs: itself, or ""
// without Identities (unsigned).
func (a *Allocator) writerLocked() string {
	if a.cfg.Identities == nil {
		return ""
	}
	return a.cfg.Self
}

// sendSignedLocked says whether this peer's states carry signatures
// (MIP3/MIP7): once every member reads them, for good (persisted, so a
// restart does not go back to states without them).
func (a *Allocator) sendSignedLocked() bool {
	if a.signedWire || a.cfg.Identities == nil {
		return a.signedWire
	}
	if a.cfg.Identities.AllRead() {
		a.signedWire = true
		a.dirty = true
		a.log.Info("every member reads signed peer infos: sending states with signatures from now on")
	}
	return a.signedWire
}

// SignsInfos says whether this peer sends its states with signatures; the
// daemon announces it in the node's metadata, so that from then on the
// others accept no unsigned info of this peer. Non-blocking.
func (a *Allocator) SignsInfos() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sendSignedLocked()
}

// signatureRuleLocked applies the signature rules to p, a remote info of
// name that would replace cur (the zero info if none), in a state from
// sender: it returns the reason to refuse it and a description, or "" to
// accept it; skip drops it without counting a refusal. Called after the
// cheap bounds, so that invented names cost no verification.
//
//   - A signed info must be signed by name itself, or be a removal
//     (rmpeer, a Node deletion) signed by any node with a bound identity.
//     A peer's own info whose name is bound to no identity here (it left
//     before this peer joined) is taken unverified, within the bounds.
//   - Until this peer sends signed states (the mesh is being upgraded),
//     an unsigned info is accepted as by the previous release.
//   - From then on, an unsigned info is accepted only of a live member
//     that sends unsigned infos (SendsUnsigned), and never of a name
//     whose info this peer holds signed (no downgrade). One refused in a
//     state from a member that runs this release (ReadsSigned) is dropped
//     without a count: it is a leftover of the sender's switch to signed
//     states (a forgery by such a member is refused all the same, only
//     not counted).
func (a *Allocator) signatureRuleLocked(name, sender string, p, cur peerInfo, pre map[string]error) (reason, detail string, skip bool) {
	ids := a.cfg.Identities
	if ids == nil {
		return "", "", false
	}
	if len(p.Sig) == 0 {
		switch {
		case !a.signedWire:
			return "", "", false
		case len(cur.Sig) == 0 && ids.SendsUnsigned(name):
			return "", "", false
		case ids.ReadsSigned(sender):
			return "", "", true
		case len(cur.Sig) > 0:
			return RejectUnsigned, fmt.Sprintf("unsigned info, but its info here is signed by %s (no downgrade)", cur.Writer), false
		}
		return RejectUnsigned, "unsigned info of a name that is no live member sending unsigned infos", false
	}
	if p.Writer != name && !p.Removed {
		return RejectBadSignature, fmt.Sprintf("signed by %s: only the peer itself signs its infos (others only removals)", p.Writer), false
	}
	err, done := pre[name]
	if !done {
		err = ids.Verify(p.Writer, infoSigBytes(a.cfg.Range, name, p), p.Sig)
	}
	switch {
	case err == nil:
		return "", "", false
	case errors.Is(err, ErrUnknownSigner) && p.Writer == name:
		// A peer's own info, but this node never saw its identity: a
		// peer that went silent or left before this one joined. Its
		// info passed the bounds (it owns space, holds addresses of a
		// removal, or is a member), and its Held may be all that keeps
		// its pods' addresses from being handed out again here (I5):
		// this node may become the heir of its space. So it is taken,
		// as the previous release took it; what a forger gains by this
		// is a name no node here has bound, within the bounds.
		return "", "", false
	case errors.Is(err, ErrUnknownSigner):
		return RejectUnknownSigner, fmt.Sprintf("signed by %s, whose name is bound to no identity", p.Writer), false
	default:
		return RejectBadSignature, fmt.Sprintf("signature by %s: %v", p.Writer, err), false
	}
}

// preVerify checks, before the merge takes the lock, the signatures of the
// infos of w that would replace an info this peer holds, and returns the
// results by name for signatureRuleLocked. With automatic reclaim on,
// heartbeats move every second, so merging a state of a large mesh
// verifies about one signature per peer (some 50 µs each): that must not
// hold up Allocate. Infos of names
// not in the table are left to the merge, after the cheap bounds, so that
// invented names cost no verification; at most one verification per name
// the table holds (maxPeers) is done here per state.
func (a *Allocator) preVerify(w wireState) map[string]error {
	ids := a.cfg.Identities
	if ids == nil || w.prefix != a.cfg.Range {
		return nil
	}
	// Not sized by the incoming state: a flood of invented names would
	// make each state allocate a table of them, none of which is kept.
	cur := make(map[string]peerInfo)
	a.mu.Lock()
	for name := range w.st.peers {
		if p, ok := a.st.peers[name]; ok {
			cur[name] = p
		}
	}
	a.mu.Unlock()
	out := map[string]error{}
	for name, p := range w.st.peers {
		c, known := cur[name]
		if !known || len(p.Sig) == 0 || comparePeerInfo(p, c) <= 0 {
			continue
		}
		out[name] = ids.Verify(p.Writer, infoSigBytes(w.prefix, name, p), p.Sig)
	}
	return out
}
