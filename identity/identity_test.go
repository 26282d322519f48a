package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentityRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	a, err := Load(path, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Name != "node-a" || len(a.PeerID) != 32 {
		t.Fatalf("new identity = %+v", a)
	}
	b, err := Load(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if b != a {
		t.Fatalf("reloaded identity %+v, want %+v", b, a)
	}
	c, err := Load(path, "renamed")
	if err != nil || c.PeerID != a.PeerID || c.Name != "renamed" {
		t.Fatalf("renamed identity = %+v, %v", c, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity mode = %v", fi.Mode().Perm())
	}
}

func TestIdentityCorrupt(t *testing.T) {
	for name, content := range map[string]string{
		"not json":   "{\"name\": ",
		"no peer id": `{"name":"a"}`,
		"bad hex":    `{"name":"a","peerID":"zz000000000000000000000000000000"}`,
		"truncated":  "",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "identity.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path, "a")
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want an error naming %s", err, path)
			}
			if got, _ := os.ReadFile(path); string(got) != content {
				t.Fatal("a corrupt identity file was overwritten")
			}
		})
	}
}
