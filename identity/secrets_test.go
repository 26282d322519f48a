package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshnet/mesh/crypto"
)

func TestKeygenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.key")
	if err := WriteNewKeyFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	data, err := ReadSecretFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := crypto.ParseKeyFile(data)
	if err != nil || len(keys) != 1 || keys[0] == (crypto.Key{}) {
		t.Fatalf("ParseKeyFile = %v, %v", len(keys), err)
	}
	if err := WriteNewKeyFile(path); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second keygen: err = %v, want a refusal", err)
	}
	again, _ := os.ReadFile(path)
	if string(again) != string(data) {
		t.Fatal("a refused keygen changed the file")
	}
	other := filepath.Join(dir, "other.key")
	if err := WriteNewKeyFile(other); err != nil {
		t.Fatal(err)
	}
	od, _ := ReadSecretFile(other)
	ok, _ := crypto.ParseKeyFile(od)
	if ok[0] == keys[0] {
		t.Fatal("two keygens wrote the same key")
	}
}

func TestSecretFileModeChecked(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"owner only", 0o600, true},
		{"owner read only", 0o400, true},
		{"group readable", 0o640, false},
		{"world readable", 0o644, false},
		{"group writable", 0o620, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(p, []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := ReadSecretFile(p)
			if tc.ok != (err == nil) {
				t.Fatalf("mode %04o: err = %v", tc.mode, err)
			}
			if !tc.ok && (!strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "chmod 600")) {
				t.Fatalf("error %q does not name the file and the fix", err)
			}
		})
	}
}
