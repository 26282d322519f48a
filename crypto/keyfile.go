package crypto

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// KeyFilePrefix starts every key line of a key file, so that a password
// file given as --key-file by mistake is refused rather than read as a key.
const KeyFilePrefix = "mesh-key-v2:"

// MaxKeyFileKeys bounds the keys of one key file: during a rotation it holds
// the new key and the old one.
const MaxKeyFileKeys = 4

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
