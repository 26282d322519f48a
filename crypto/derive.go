// Package crypto derives the mesh's shared secrets from the mesh password and
// keeps the node's WireGuard key pair. It is a leaf: it imports nothing of the
// project but the atomic file writer.
package crypto

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
)

// The context strings bind every derived key to its single purpose, so that a
// key derived for gossip can never be confused with one for the data plane.
// They are part of the wire contract: changing one splits the mesh.
const (
	// Salt is the fixed HKDF salt shared by every mesh installation.
	Salt = "mesh overlay network v1"
	// GossipContext is the HKDF info for the memberlist AES-256-GCM key.
	GossipContext = "mesh gossip key"
	// PresharedContext is the HKDF info prefix for WireGuard preshared keys.
	PresharedContext = "mesh wireguard psk"
)

// ErrEmptyPassword is returned when a derivation is asked of an empty password.
var ErrEmptyPassword = errors.New("mesh password is empty")

// GossipKey derives the 32-byte AES-256-GCM key that memberlist uses for its
// keyring. Peers with different passwords derive different keys and so cannot
// read each other's gossip.
func GossipKey(password []byte) ([]byte, error) {
	if len(password) == 0 {
		return nil, ErrEmptyPassword
	}
	key, err := hkdf.Key(sha256.New, password, []byte(Salt), GossipContext, 32)
	if err != nil {
		return nil, fmt.Errorf("failed to derive gossip key: %w", err)
	}
	return key, nil
}

// PresharedKey derives the WireGuard preshared key for the pair of peers with
// public keys a and b. It is symmetric in a and b, so both ends compute the
// same value without talking to each other, and it differs for every pair.
func PresharedKey(password []byte, a, b Key) (Key, error) {
	if len(password) == 0 {
		return Key{}, ErrEmptyPassword
	}
	lo, hi := a, b
	if bytes.Compare(lo[:], hi[:]) > 0 {
		lo, hi = hi, lo
	}
	info := make([]byte, 0, len(PresharedContext)+2*KeyLen)
	info = append(info, PresharedContext...)
	info = append(info, lo[:]...)
	info = append(info, hi[:]...)
	raw, err := hkdf.Key(sha256.New, password, []byte(Salt), string(info), KeyLen)
	if err != nil {
		return Key{}, fmt.Errorf("failed to derive preshared key: %w", err)
	}
	var k Key
	copy(k[:], raw)
	return k, nil
}
