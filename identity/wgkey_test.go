package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshnet/mesh/crypto"
)

func TestPrivateKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wireguard.key")
	k1, err := LoadOrCreateWireGuardKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	k2, err := LoadOrCreateWireGuardKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Bytes() != k2.Bytes() {
		t.Fatal("reloading the key gave a different key")
	}
	if s := k1.String(); strings.Contains(s, k1.Bytes().String()) {
		t.Fatal("PrivateKey.String reveals the key")
	}
	pub, err := k1.Public()
	if err != nil || pub == (crypto.Key{}) {
		t.Fatalf("Public() = %v, %v", pub, err)
	}
	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateWireGuardKey(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("corrupt key file: err = %v, want an error naming %s", err, path)
	}
}
