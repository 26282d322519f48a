package identity

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/meshnet/mesh/crypto"
)

// maxSecretFile bounds what is read of a key or password file.
const maxSecretFile = 64 << 10

// CheckSecretFileMode refuses a key or password file that anyone but its
// owner may read or write: a secret readable by others is no secret.
func CheckSecretFileMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("failed to read secret file %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("secret file %q is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("secret file %q has mode %04o, readable by group or others: run chmod 600 %s", path, perm, path)
	}
	return nil
}

// ReadSecretFile reads a key or password file after checking its mode.
func ReadSecretFile(path string) ([]byte, error) {
	if err := CheckSecretFileMode(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read secret file %q: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read secret file %q: %w", path, err)
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("secret file %q is larger than %d bytes", path, maxSecretFile)
	}
	return b, nil
}

// WriteNewKeyFile writes a new random 32-byte key to path with mode 0600.
// It refuses to overwrite an existing file (a lost key splits a mesh), and
// never returns or prints the key.
func WriteNewKeyFile(path string) error {
	var k crypto.Key
	if _, err := rand.Read(k[:]); err != nil {
		return fmt.Errorf("failed to read random bytes: %w", err)
	}
	content := fmt.Sprintf("# mesh key, made %s by mesh keygen. Keep it secret (mode 0600);\n# every member of the mesh needs the same file.\n%s\n",
		time.Now().UTC().Format(time.RFC3339), crypto.KeyFileLine(k))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("key file %q already exists: refusing to overwrite it", path)
		}
		return fmt.Errorf("failed to create key file %q: %w", path, err)
	}
	_, werr := f.WriteString(content)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return fmt.Errorf("failed to write key file %q: %w", path, werr)
	}
	return nil
}

// ReadPasswordFile reads a password file: its whole content, without the
// trailing line break, is the password.
func ReadPasswordFile(path string) ([]byte, error) {
	b, err := ReadSecretFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("password file %q is empty", path)
	}
	return b, nil
}

// ReadKeyFile reads the keys of a mesh key file (mesh keygen's format,
// crypto.ParseKeyFile), newest first, after checking its mode.
func ReadKeyFile(path string) ([]crypto.Key, error) {
	data, err := ReadSecretFile(path)
	if err != nil {
		return nil, err
	}
	keys, err := crypto.ParseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("invalid key file %q: %w", path, err)
	}
	return keys, nil
}
