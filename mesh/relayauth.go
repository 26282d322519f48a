package mesh

import (
	"crypto/hmac"
	"crypto/sha256"

	"github.com/hashicorp/memberlist"
)

// Authenticated envelopes (version 2).
//
// An envelope of version 1 says only where its payload goes, so anyone who
// can send to a node's gossip port could have it forwarded: a relay would
// carry packets and open streams to members of another site for a sender
// outside the mesh (the payload still had to pass memberlist's decryption
// at the target, so what leaked was reach, not membership). Version 2
// adds a tag that only holders of the mesh's gossip key can make:
//
//	0xF5 | 2 | ttl | len(target) target | len(origin) origin | tag (16 bytes) | payload
//
// The tag is HMAC-SHA256, cut to 16 bytes, under a key derived from a
// gossip key (relayMACKey), over the kind ('p' for a packet, 's' for a
// stream), the target, the origin and, for a packet, the payload. The TTL
// is left out so that each relay can take one off without the key of the
// sender; a relay checks the tag before it forwards anything, and the
// target before it hands memberlist anything. A stream's tag covers its
// header only: what follows is memberlist's own encrypted stream, which
// the target checks as for a direct one.
//
// What the tag does not do: it does not stop a replay of a captured
// envelope, which makes the relays deliver again what they delivered
// once, as a replayed direct packet would (memberlist and the IPAM ignore
// what they already hold); and it does not hide the target and origin
// names.
//
// Keys: the tag is made with the keyring's primary key and checked with
// each installed key, so envelopes keep flowing while `mesh rotate` moves
// the mesh to a new key, exactly as memberlist's own messages do. A mesh
// without gossip encryption (--insecure) has no key and sends version 1.
//
// Upgrade: a node of the previous release reads and sends version 1 only.
// A node of this release advertises that it reads version 2 (Meta
// GossipRelayAuth), sends version 2 to every hop that advertises it and
// version 1 to one that does not, and accepts version 1 only while such
// a member is live (relayTable.acceptV1): once the last node of the
// previous release is upgraded or gone, an envelope without a tag is
// refused.

const (
	// relayAuthVersion is the envelope version with a tag; nodes
	// advertise it in Meta.GossipRelayAuth.
	relayAuthVersion byte = 2
	// relayTagLen is the tag's length: 128 bits, as memberlist's own
	// AES-GCM tag.
	relayTagLen = 16
	// relayMACLabel separates the envelope's MAC keys from the gossip
	// keys they are derived from.
	relayMACLabel = "mesh gossip relay envelope v2"
)

// The kinds of envelope a tag is bound to.
const (
	kindPacket byte = 'p'
	kindStream byte = 's'
)

// relayMACKey derives the envelope MAC key from a gossip key.
func relayMACKey(gossipKey []byte) []byte {
	m := hmac.New(sha256.New, gossipKey)
	m.Write([]byte(relayMACLabel))
	return m.Sum(nil)
}

// envelopeTag is the tag of an envelope of kind for target from origin
// with payload (nil for a stream) under a MAC key.
func envelopeTag(macKey []byte, kind byte, target, origin string, payload []byte) []byte {
	m := hmac.New(sha256.New, macKey)
	m.Write([]byte{kind, byte(len(target))})
	m.Write([]byte(target))
	m.Write([]byte{byte(len(origin))})
	m.Write([]byte(origin))
	m.Write(payload)
	return m.Sum(nil)[:relayTagLen]
}

// envelopeKeys returns the MAC keys of kr's gossip keys, the primary's
// first; none without a keyring (a mesh without gossip encryption).
func envelopeKeys(kr *memberlist.Keyring) [][]byte {
	if kr == nil {
		return nil
	}
	keys := kr.GetKeys()
	out := make([][]byte, 0, len(keys))
	for _, k := range keys {
		out = append(out, relayMACKey(k))
	}
	return out
}

// sealTag returns the tag this node puts on an envelope: made with its
// primary gossip key; nil when it has none.
func (t *relayTransport) sealTag(kind byte, h envelopeHeader, payload []byte) []byte {
	keys := envelopeKeys(t.keyring)
	if len(keys) == 0 {
		return nil
	}
	return envelopeTag(keys[0], kind, h.target, h.origin, payload)
}

// authentic says whether an envelope of kind may be acted on: one of
// version 2 whose tag one of this node's gossip keys made, or one of
// version 1 while this node has no gossip key or a member of the previous
// release is live (the upgrade window).
func (t *relayTransport) authentic(kind byte, h envelopeHeader, payload []byte) bool {
	keys := envelopeKeys(t.keyring)
	if h.version != relayAuthVersion {
		return len(keys) == 0 || t.table.Load().acceptV1
	}
	return taggedByAny(keys, h.tag, kind, h.target, h.origin, payload)
}

// taggedByAny says whether tag is the envelopeTag of (kind, target,
// origin, payload) under one of the MAC keys: the one check of every tag
// this package takes (envelopes, attachments, hellos, reachability
// checks), so that each accepts what any installed gossip key made.
func taggedByAny(keys [][]byte, tag []byte, kind byte, target, origin string, payload []byte) bool {
	for _, k := range keys {
		if hmac.Equal(tag, envelopeTag(k, kind, target, origin, payload)) {
			return true
		}
	}
	return false
}
