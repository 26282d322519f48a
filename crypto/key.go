package crypto

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
)

// KeyLen is the length of a WireGuard (Curve25519) key.
const KeyLen = 32

// Key is a WireGuard private, public or preshared key.
type Key [KeyLen]byte

// String returns the base64 form WireGuard tools use. Never call it on a
// private key in a log line.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey decodes the base64 form of a key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return k, fmt.Errorf("invalid key: %w", err)
	}
	if len(b) != KeyLen {
		return k, fmt.Errorf("invalid key: %d bytes, want %d", len(b), KeyLen)
	}
	copy(k[:], b)
	return k, nil
}

// PrivateKey is a node's WireGuard private key. Its String method is
// deliberately redacted so that it cannot leak through a log call.
type PrivateKey struct{ k Key }

// GeneratePrivateKey makes a new clamped Curve25519 private key.
func GeneratePrivateKey() (PrivateKey, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return PrivateKey{}, fmt.Errorf("failed to read random bytes: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return PrivateKey{k}, nil
}

// NewPrivateKey makes k a private key (as read from a key file; it is not
// clamped again).
func NewPrivateKey(k Key) PrivateKey { return PrivateKey{k} }

// Bytes returns the raw key, for handing to the data plane only.
func (p PrivateKey) Bytes() Key { return p.k }

// String never reveals the key.
func (p PrivateKey) String() string { return "(private key redacted)" }

// Public computes the public key.
func (p PrivateKey) Public() (Key, error) {
	priv, err := ecdh.X25519().NewPrivateKey(p.k[:])
	if err != nil {
		return Key{}, fmt.Errorf("invalid private key: %w", err)
	}
	var pub Key
	copy(pub[:], priv.PublicKey().Bytes())
	return pub, nil
}
