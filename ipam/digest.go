package ipam

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net/netip"
)

// Digests at rest (docs/ipam.md, "Digests at rest"). memberlist's
// push/pull is the IPAM's anti-entropy: every node exchanges its whole
// state with a random member every push/pull interval, which repairs any
// delta or broadcast lost on the way. At rest that is two whole states per
// exchange, about 83 bytes a peer each, to learn nothing. With automatic
// reclaim off a mesh at rest holds the same state on every node
// (heartbeatLocked), so a push/pull that is no join carries a digest of
// the state instead: its SHA-256 over one canonical encoding. A node whose
// state has another digest sends its whole state to the digest's sender
// (msgState, through the Transport), which is what the push/pull would
// have carried: the anti-entropy is unchanged, the closure property P of
// docs/scale.md holds for every state merged (a digest merges nothing),
// and at rest a push/pull costs two digests.

// stateMagicDigest starts a digest; decodePrefix refuses it as an unknown
// layout, so it is never mistaken for a state.
const stateMagicDigest = "MIPD"

// digestLen is the size of the digest itself.
const digestLen = sha256.Size

// stateDigest is the digest of st: the same for the same state on every
// peer (no sender, signatures always in, names sorted by the encoding).
func stateDigest(prefix netip.Prefix, st state) [digestLen]byte {
	return sha256.Sum256(encodeStateAs(prefix, "", st, true))
}

// encodeDigest is a push/pull digest: magic, sender, digest.
func encodeDigest(sender string, sum [digestLen]byte) []byte {
	b := make([]byte, 0, len(stateMagicDigest)+1+len(sender)+digestLen)
	b = append(b, stateMagicDigest...)
	b = appendString(b, sender)
	return append(b, sum[:]...)
}

// isDigest says whether buf is a digest rather than a state.
func isDigest(buf []byte) bool { return bytes.HasPrefix(buf, []byte(stateMagicDigest)) }

// decodeDigest reads what encodeDigest wrote.
func decodeDigest(buf []byte) (sender string, sum [digestLen]byte, err error) {
	d := &decoder{b: buf[len(stateMagicDigest):]}
	sender = d.str()
	raw := d.bytes(digestLen)
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes after a digest", len(d.b))
	}
	if d.err != nil {
		return "", sum, d.err
	}
	if sender == "" {
		return "", sum, fmt.Errorf("digest without a sender")
	}
	return sender, [digestLen]byte(raw), nil
}

// digestsLocked says whether a push/pull that is no join may carry a
// digest: every member reads them, automatic reclaim is off (with it on,
// heartbeats make every state differ from the last, and a digest would
// only add to the whole states), and this peer is not recovering (I6: it
// sends only its own info).
func (a *Allocator) digestsLocked() bool {
	return a.cfg.ReclaimAfter <= 0 && a.cfg.Digests != nil && a.cfg.Digests() && !a.recovering
}

// PushPullState is what this peer sends in a memberlist push/pull: its
// LocalState for a join, or while digests are off, and otherwise a digest
// of its state. Non-blocking; safe for concurrent use.
func (a *Allocator) PushPullState(join bool) []byte {
	a.mu.Lock()
	if join || !a.digestsLocked() {
		a.mu.Unlock()
		return a.LocalState()
	}
	defer a.mu.Unlock()
	return encodeDigest(a.cfg.Self, stateDigest(a.cfg.Range, a.st))
}

// mergeDigestLocked handles a push/pull digest: if this peer's state has
// another digest, it sends the sender its whole state, as the push/pull
// would have (the sender does the same the other way). At most one state
// per sender per tick: a digest is the
// sender's word, and one naming another member must not make this peer
// send that member states without end. The sender must be a live member
// or a peer of the table (a joiner is a member before it is in the table).
func (a *Allocator) mergeDigestLocked(buf []byte) error {
	if a.closed {
		return ErrClosed
	}
	sender, sum, err := decodeDigest(buf)
	if err != nil {
		a.rejectLocked(RejectCorrupt, fmt.Sprintf("push/pull digest: %v", err))
		return fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	if _, known := a.st.peers[sender]; !known && !a.members[sender] || sender == a.cfg.Self || a.recovering {
		// A recovering peer sends only its own info (I6), which its
		// recovery requests already do.
		return nil
	}
	if a.digestAnswered[sender] {
		return nil
	}
	if stateDigest(a.cfg.Range, a.st) == sum {
		a.log.Debug("push/pull digest: same state", "from", sender)
		return nil
	}
	a.log.Debug("push/pull digest differs: sending the whole state", "to", sender)
	a.digestAnswered[sender] = true
	a.outbox = append(a.outbox, outMsg{to: sender, msg: a.stateMsgLocked()})
	return nil
}

// DigestsOn says whether this peer's push/pull exchanges that are no join
// carry digests now (status). Non-blocking; safe for concurrent use.
func (a *Allocator) DigestsOn() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.digestsLocked()
}
