package crypto

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// Argon2id parameters for keys from passwords. They are constants of the
// program, never read from a file, a flag or the network, so no peer can
// weaken them; changing one changes every password-derived key (a new
// version of the contexts below, and an upgrade through rotation). They are
// RFC 9106's second recommended option: 3 passes over 64 MiB with 4 lanes,
// about 0.35 s on the 2-core development machine (see `make bench`).
const (
	Argon2Time    = 3
	Argon2Memory  = 64 * 1024 // KiB
	Argon2Threads = 4
)

// MinPasswordLen is the shortest password accepted without an explicit
// override (--allow-short-password).
const MinPasswordLen = 16

// Domain-separation labels of the v2 derivations. A key file and a password
// go through different labels, so they never yield the same master key, and
// each derived key is bound to its single purpose. Part of the wire contract.
const (
	// PasswordSaltContext prefixes the mesh name in the Argon2id salt.
	PasswordSaltContext = "mesh password salt v2"
	// MasterSalt is the HKDF salt that turns raw material into a master key.
	MasterSalt = "mesh master key v2"
	// PasswordMasterContext is the HKDF info for a password's master key.
	PasswordMasterContext = "mesh master key from password v2"
	// KeyFileMasterContext is the HKDF info for a key file's master key.
	KeyFileMasterContext = "mesh master key from key file v2"
	// GossipContextV2 is the HKDF info for the memberlist key.
	GossipContextV2 = "mesh gossip key v2"
	// PresharedContextV2 prefixes the pair's public keys for a WireGuard PSK.
	PresharedContextV2 = "mesh wireguard psk v2"
	// KeyIDContext is the HKDF info for a key's public identifier.
	KeyIDContext = "mesh key id v2"
	// LegacyKeyIDContext is the same for a previous-release (v1) key.
	LegacyKeyIDContext = "mesh key id v1"
)

// KeyIDLen is the length of a key ID in hex digits.
const KeyIDLen = 16

// MaxMeshNameLen bounds --mesh-name.
const MaxMeshNameLen = 128

// ErrShortPassword is returned for a password under MinPasswordLen.
var ErrShortPassword = fmt.Errorf("mesh password is shorter than %d characters", MinPasswordLen)

// MasterKey is one mesh secret, reduced once to a 32-byte pseudorandom key
// from which the gossip key and every pair's preshared key are expanded with
// HKDF (cheap). Its String never reveals it.
type MasterKey struct {
	prk    [32]byte
	legacy bool
	id     string
	gossip []byte
	pskCtx string
}

// ID is the key's public identifier: 16 hex digits expanded from the key
// with its own label, so it reveals nothing of the key, yet two nodes with
// the same key compute the same ID. Nodes gossip the IDs of the keys they
// hold, so that a pair can pick a key both have.
func (m *MasterKey) ID() string { return m.id }

// Legacy reports whether this is the previous release's key (HKDF of the
// password with a salt shared by every installation).
func (m *MasterKey) Legacy() bool { return m.legacy }

// String never reveals the key.
func (m *MasterKey) String() string {
	if m.legacy {
		return "legacy key " + m.id
	}
	return "key " + m.id
}

// GossipKey is the 32-byte AES-256-GCM key for memberlist's keyring.
func (m *MasterKey) GossipKey() []byte { return bytes.Clone(m.gossip) }

// PresharedKey derives the WireGuard preshared key for the pair of peers
// with public keys a and b. It is symmetric in a and b and differs for
// every pair.
func (m *MasterKey) PresharedKey(a, b Key) Key {
	lo, hi := a, b
	if bytes.Compare(lo[:], hi[:]) > 0 {
		lo, hi = hi, lo
	}
	info := make([]byte, 0, len(m.pskCtx)+2*KeyLen)
	info = append(info, m.pskCtx...)
	info = append(info, lo[:]...)
	info = append(info, hi[:]...)
	var k Key
	copy(k[:], expand(m.prk, string(info), KeyLen))
	return k
}

func expand(prk [32]byte, info string, n int) []byte {
	out, err := hkdf.Expand(sha256.New, prk[:], info, n)
	if err != nil {
		// Only a length over 255*32 fails; ours are constants.
		panic(fmt.Sprintf("hkdf expand: %v", err))
	}
	return out
}

func newMaster(prk [32]byte, legacy bool) *MasterKey {
	m := &MasterKey{prk: prk, legacy: legacy}
	if legacy {
		m.id = hex.EncodeToString(expand(prk, LegacyKeyIDContext, KeyIDLen/2))
		m.gossip = expand(prk, GossipContext, 32)
		m.pskCtx = PresharedContext
	} else {
		m.id = hex.EncodeToString(expand(prk, KeyIDContext, KeyIDLen/2))
		m.gossip = expand(prk, GossipContextV2, 32)
		m.pskCtx = PresharedContextV2
	}
	return m
}

// CheckMeshName validates a mesh name: it salts every password-derived
// key, so every member must give the same one.
func CheckMeshName(name string) error {
	if name == "" {
		return errors.New("mesh name is empty: a password needs --mesh-name (or MESH_NAME), the same on every member")
	}
	if len(name) > MaxMeshNameLen {
		return fmt.Errorf("mesh name is %d bytes, more than %d", len(name), MaxMeshNameLen)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("mesh name %q holds a control character", name)
		}
	}
	return nil
}

// PasswordSalt is the Argon2id salt of a mesh: a hash of the mesh name, so
// that two installations with the same password get different keys and a
// guess against one capture is no guess against another.
func PasswordSalt(meshName string) []byte {
	h := sha256.New()
	h.Write([]byte(PasswordSaltContext))
	h.Write([]byte{0})
	h.Write([]byte(meshName))
	return h.Sum(nil)
}

// PasswordKey runs Argon2id (the parameters above) once over the password
// with the mesh's salt and returns the master key. It costs about 0.35 s
// and 64 MiB: call it once per password, never per peer or per reconcile.
func PasswordKey(password []byte, meshName string) (*MasterKey, error) {
	if len(password) == 0 {
		return nil, ErrEmptyPassword
	}
	if err := CheckMeshName(meshName); err != nil {
		return nil, err
	}
	stretched := argon2.IDKey(password, PasswordSalt(meshName), Argon2Time, Argon2Memory, Argon2Threads, 32)
	return masterFrom(stretched, PasswordMasterContext), nil
}

// KeyFileKey returns the master key of a random 32-byte key (a key file's
// line). It is already random, so it needs no slow KDF; its own label keeps
// it apart from any password's key.
func KeyFileKey(raw Key) *MasterKey {
	return masterFrom(raw[:], KeyFileMasterContext)
}

func masterFrom(secret []byte, context string) *MasterKey {
	raw, err := hkdf.Key(sha256.New, secret, []byte(MasterSalt), context, 32)
	if err != nil {
		panic(fmt.Sprintf("hkdf: %v", err))
	}
	var prk [32]byte
	copy(prk[:], raw)
	return newMaster(prk, false)
}

// LegacyPasswordKey is the previous release's key for password: one HKDF
// pass with the salt every installation shares. It is cheap to guess and
// exists only so that a mesh of the previous release can be upgraded node
// by node (--accept-legacy-key).
func LegacyPasswordKey(password []byte) (*MasterKey, error) {
	if len(password) == 0 {
		return nil, ErrEmptyPassword
	}
	raw, err := hkdf.Extract(sha256.New, password, []byte(Salt))
	if err != nil {
		return nil, fmt.Errorf("failed to derive legacy key: %w", err)
	}
	var prk [32]byte
	copy(prk[:], raw)
	return newMaster(prk, true), nil
}
