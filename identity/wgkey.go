package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/atomicfile"
)

// LoadOrCreateWireGuardKey reads the private key at path, or creates one there
// (mode 0600, written atomically) when the file does not exist. A file that
// exists but does not hold a key is an error naming the file; it is never
// silently replaced, as that would change the node's identity.
func LoadOrCreateWireGuardKey(path string) (crypto.PrivateKey, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, perr := crypto.ParseKey(string(data))
		if perr != nil {
			return crypto.PrivateKey{}, fmt.Errorf("corrupt private key file %q: %w", path, perr)
		}
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().Perm()&0o077 != 0 {
			if cerr := os.Chmod(path, 0o600); cerr != nil {
				return crypto.PrivateKey{}, fmt.Errorf("failed to restrict mode of %q: %w", path, cerr)
			}
		}
		return crypto.NewPrivateKey(k), nil
	case errors.Is(err, fs.ErrNotExist):
		p, gerr := crypto.GeneratePrivateKey()
		if gerr != nil {
			return crypto.PrivateKey{}, gerr
		}
		if werr := atomicfile.Write(path, []byte(p.Bytes().String()+"\n"), 0o600); werr != nil {
			return crypto.PrivateKey{}, fmt.Errorf("failed to save private key: %w", werr)
		}
		return p, nil
	default:
		return crypto.PrivateKey{}, fmt.Errorf("failed to read private key file %q: %w", path, err)
	}
}

// SaveWireGuardKey replaces the private key file at path (mode 0600, written
// atomically), for a rotation of the node's key.
func SaveWireGuardKey(path string, p crypto.PrivateKey) error {
	if err := atomicfile.Write(path, []byte(p.Bytes().String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("failed to save private key: %w", err)
	}
	return nil
}
