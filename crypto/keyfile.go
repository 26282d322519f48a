package crypto

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"
)

// KeyFilePrefix starts every key line of a key file, so that a password
// file given as --key-file by mistake is refused rather than read as a key.
const KeyFilePrefix = "mesh-key-v2:"

// MaxKeyFileKeys bounds the keys of one key file: during a rotation it holds
// the new key and the old one.
const MaxKeyFileKeys = 4

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

// ParseKeyFile reads the keys of a key file's content: one key per line,
// newest first, each KeyFilePrefix followed by 32 bytes in base64; blank
// lines and lines starting with # are ignored.
func ParseKeyFile(data []byte) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		rest, ok := strings.CutPrefix(s, KeyFilePrefix)
		if !ok {
			return nil, fmt.Errorf("line %d is not a mesh key (want %s followed by base64; make one with mesh keygen)", line, KeyFilePrefix)
		}
		k, err := ParseKey(rest)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no key in it (make one with mesh keygen)")
	}
	if len(keys) > MaxKeyFileKeys {
		return nil, fmt.Errorf("%d keys, more than %d", len(keys), MaxKeyFileKeys)
	}
	return keys, nil
}

// KeyFileLine is the line a key file holds for k.
func KeyFileLine(k Key) string {
	return KeyFilePrefix + base64.StdEncoding.EncodeToString(k[:])
}

// WriteNewKeyFile writes a new random 32-byte key to path with mode 0600.
// It refuses to overwrite an existing file (a lost key splits a mesh), and
// never returns or prints the key.
func WriteNewKeyFile(path string) error {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return fmt.Errorf("failed to read random bytes: %w", err)
	}
	content := fmt.Sprintf("# mesh key, made %s by mesh keygen. Keep it secret (mode 0600);\n# every member of the mesh needs the same file.\n%s\n",
		time.Now().UTC().Format(time.RFC3339), KeyFileLine(k))
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
