package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/meshnet/mesh/internal/atomicfile"
)

// signKeyPrefix tags the signing key file's line, so that a WireGuard key
// or a mesh key put there by mistake is refused, not taken as a seed.
const signKeyPrefix = "mesh-signing-key-v1:"

// LoadOrCreateSigningKey reads the node's long-term ed25519 signing key at
// path, or creates one there (mode 0600, atomically) when the file does not
// exist. The key binds the node's name in gossip (docs/architecture.md,
// "Trust and keys"); a file that exists but holds no key is an error naming
// it and is never replaced, as a new key makes the node a stranger to every
// peer that remembers its name.
func LoadOrCreateSigningKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := CheckSecretFileMode(path); err != nil {
			return nil, err
		}
		line := strings.TrimSpace(string(data))
		enc, ok := strings.CutPrefix(line, signKeyPrefix)
		if !ok {
			return nil, fmt.Errorf("corrupt signing key file %q: no %q line (move it away to start with a new identity, then run mesh forget-identity on the other nodes)", path, signKeyPrefix)
		}
		seed, derr := base64.StdEncoding.DecodeString(enc)
		if derr != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("corrupt signing key file %q: not %d base64 bytes", path, ed25519.SeedSize)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	case errors.Is(err, fs.ErrNotExist):
		_, priv, gerr := ed25519.GenerateKey(rand.Reader)
		if gerr != nil {
			return nil, fmt.Errorf("failed to make a signing key: %w", gerr)
		}
		line := signKeyPrefix + base64.StdEncoding.EncodeToString(priv.Seed()) + "\n"
		if werr := atomicfile.Write(path, []byte(line), 0o600); werr != nil {
			return nil, fmt.Errorf("failed to save signing key: %w", werr)
		}
		return priv, nil
	default:
		return nil, fmt.Errorf("failed to read signing key file %q: %w", path, err)
	}
}

// BindingsVersion is the format of the name-binding file; a file of a
// higher version is refused rather than misread.
const BindingsVersion = 1

type bindingsFile struct {
	Version int `json:"version"`
	// Bindings maps a node name to the base64 ed25519 public key first
	// seen for it.
	Bindings map[string]string `json:"bindings"`
}

// LoadBindings reads the name → public key bindings at path; a missing file
// is an empty table. A corrupt file is an error naming it, never an empty
// table: forgetting every binding would let any node take any name.
func LoadBindings(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read identity bindings %q: %w", path, err)
	}
	var f bindingsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("corrupt identity bindings %q: %w (fix or move it away; moving it away forgets every name binding)", path, err)
	}
	if f.Version != BindingsVersion {
		return nil, fmt.Errorf("identity bindings %q have version %d, this release reads %d", path, f.Version, BindingsVersion)
	}
	for name, k := range f.Bindings {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("corrupt identity bindings %q: key of %q is not a base64 ed25519 public key", path, name)
		}
	}
	if f.Bindings == nil {
		f.Bindings = map[string]string{}
	}
	return f.Bindings, nil
}

// SaveBindings writes the bindings to path (mode 0600, atomically).
func SaveBindings(path string, b map[string]string) error {
	out, err := json.MarshalIndent(bindingsFile{Version: BindingsVersion, Bindings: b}, "", "  ")
	if err != nil {
		return fmt.Errorf("failed to encode identity bindings: %w", err)
	}
	if err := atomicfile.Write(path, append(out, '\n'), 0o600); err != nil {
		return fmt.Errorf("failed to save identity bindings: %w", err)
	}
	return nil
}
