package crypto

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/meshnet/mesh/internal/atomicfile"
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

// LoadOrCreatePrivateKey reads the private key at path, or creates one there
// (mode 0600, written atomically) when the file does not exist. A file that
// exists but does not hold a key is an error naming the file; it is never
// silently replaced, as that would change the node's identity.
func LoadOrCreatePrivateKey(path string) (PrivateKey, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, perr := ParseKey(string(data))
		if perr != nil {
			return PrivateKey{}, fmt.Errorf("corrupt private key file %q: %w", path, perr)
		}
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().Perm()&0o077 != 0 {
			if cerr := os.Chmod(path, 0o600); cerr != nil {
				return PrivateKey{}, fmt.Errorf("failed to restrict mode of %q: %w", path, cerr)
			}
		}
		return PrivateKey{k}, nil
	case errors.Is(err, fs.ErrNotExist):
		p, gerr := GeneratePrivateKey()
		if gerr != nil {
			return PrivateKey{}, gerr
		}
		if werr := atomicfile.Write(path, []byte(p.k.String()+"\n"), 0o600); werr != nil {
			return PrivateKey{}, fmt.Errorf("failed to save private key: %w", werr)
		}
		return p, nil
	default:
		return PrivateKey{}, fmt.Errorf("failed to read private key file %q: %w", path, err)
	}
}

// SavePrivateKey replaces the private key file at path (mode 0600, written
// atomically), for a rotation of the node's key.
func SavePrivateKey(path string, p PrivateKey) error {
	if err := atomicfile.Write(path, []byte(p.k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("failed to save private key: %w", err)
	}
	return nil
}
