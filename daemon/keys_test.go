package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/mesh"
)

func writeSecret(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func newKeyFile(t *testing.T, dir, name string) (string, *crypto.MasterKey) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := identity.WriteNewKeyFile(p); err != nil {
		t.Fatal(err)
	}
	raws, err := identity.ReadKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, crypto.KeyFileKey(raws[0])
}

const longPassword = "a password of more than sixteen characters"

func TestLoadKeys(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, dir, "mesh.key")
	pwFile := writeSecret(t, dir, "password", longPassword+"\n", 0o600)
	tests := []struct {
		name    string
		cfg     Config
		want    int    // keys loaded
		legacy  int    // of them legacy
		wantErr string // substring of the error
	}{
		{"key file", Config{KeyFile: keyFile}, 1, 0, ""},
		{"password file", Config{PasswordFiles: []string{pwFile}, MeshName: "m"}, 1, 0, ""},
		{"environment password", Config{Password: []byte(longPassword), MeshName: "m"}, 1, 0, ""},
		{"same password twice counts once", Config{PasswordFiles: []string{pwFile}, Password: []byte(longPassword), MeshName: "m"}, 1, 0, ""},
		{"key file and password, with legacy", Config{KeyFile: keyFile, PasswordFiles: []string{pwFile}, MeshName: "m", AcceptLegacyKey: true}, 3, 1, ""},
		{"short password refused", Config{Password: []byte("short secret"), MeshName: "m"}, 0, 0, "shorter than 16"},
		{"short password allowed", Config{Password: []byte("short secret"), MeshName: "m", AllowShortPassword: true}, 1, 0, ""},
		{"short password file refused", Config{PasswordFiles: []string{writeSecret(t, dir, "short", "tiny\n", 0o600)}, MeshName: "m"}, 0, 0, "shorter than 16"},
		{"group-readable password file", Config{PasswordFiles: []string{writeSecret(t, dir, "pw-640", longPassword, 0o640)}, MeshName: "m"}, 0, 0, "chmod 600"},
		{"world-readable key file", Config{KeyFile: writeSecret(t, dir, "key-644", "x", 0o644)}, 0, 0, "chmod 600"},
		{"password file as key file", Config{KeyFile: pwFile}, 0, 0, "not a mesh key"},
		{"empty password file", Config{PasswordFiles: []string{writeSecret(t, dir, "empty", "\n", 0o600)}, MeshName: "m"}, 0, 0, "is empty"},
		{"missing file", Config{KeyFile: filepath.Join(dir, "nope")}, 0, 0, "nope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s keyStore
			keys, err := s.loadKeys(&tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			legacy := 0
			for _, k := range keys {
				if k.Legacy() {
					legacy++
				}
			}
			if len(keys) != tc.want || legacy != tc.legacy {
				t.Fatalf("loaded %v (%d legacy), want %d keys, %d legacy", keyIDs(keys), legacy, tc.want, tc.legacy)
			}
			if tc.legacy > 0 && !keys[len(keys)-1].Legacy() {
				t.Fatal("the legacy key is not the last (oldest)")
			}
		})
	}
}

// The slow KDF runs once per password, however often the keys are
// reloaded and however many peers there are.
func TestArgon2RunsOncePerPassword(t *testing.T) {
	dir := t.TempDir()
	pwFile := writeSecret(t, dir, "password", longPassword, 0o600)
	cfg := Config{PasswordFiles: []string{pwFile}, MeshName: "m"}
	var s keyStore
	first, err := s.loadKeys(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := s.loadKeys(&cfg)
		if err != nil || again[0].ID() != first[0].ID() {
			t.Fatalf("reload: %v, %v", again, err)
		}
	}
	if s.argonRuns != 1 {
		t.Fatalf("Argon2id ran %d times for one password, want 1", s.argonRuns)
	}
	// A new password (a rotation) costs one more run, the old none.
	newFile := writeSecret(t, dir, "new", "the next password of the mesh", 0o600)
	cfg.PasswordFiles = []string{newFile, pwFile}
	keys, err := s.loadKeys(&cfg)
	if err != nil || len(keys) != 2 || keys[1].ID() != first[0].ID() {
		t.Fatalf("rotation keys %v, %v", keys, err)
	}
	if s.argonRuns != 2 {
		t.Fatalf("Argon2id ran %d times for two passwords, want 2", s.argonRuns)
	}
}

func TestValidateSecrets(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"nothing", func(c *Config) {}, "no mesh password"},
		{"password without mesh name", func(c *Config) { c.Password = []byte(longPassword) }, "--mesh-name"},
		{"password file without mesh name", func(c *Config) { c.PasswordFiles = []string{"f"} }, "--mesh-name"},
		{"password with mesh name", func(c *Config) { c.Password, c.MeshName = []byte(longPassword), "m" }, ""},
		{"key file needs no name", func(c *Config) { c.KeyFile = "f" }, ""},
		{"legacy without password", func(c *Config) { c.KeyFile, c.AcceptLegacyKey = "f", true }, "needs the password"},
		{"insecure", func(c *Config) { c.Insecure = true }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			err := cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func testKeys(t *testing.T, n int) []*crypto.MasterKey {
	t.Helper()
	var out []*crypto.MasterKey
	for i := range n {
		var raw crypto.Key
		raw[0] = byte(i + 1)
		out = append(out, crypto.KeyFileKey(raw))
	}
	return out
}

func member(name string, state api.MemberState, ids ...string) mesh.Member {
	return mesh.Member{Name: name, State: state, Meta: mesh.Meta{Keys: ids}}
}

func TestGossipPrimary(t *testing.T) {
	ks := testKeys(t, 2)
	newK, oldK := ks[0], ks[1]
	legacy, err := crypto.LegacyPasswordKey([]byte(longPassword))
	if err != nil {
		t.Fatal(err)
	}
	both := []*crypto.MasterKey{newK, oldK}
	tests := []struct {
		name    string
		mine    []*crypto.MasterKey
		current *crypto.MasterKey
		members []mesh.Member
		want    *crypto.MasterKey
	}{
		{"at start, the oldest", both, nil, nil, oldK},
		{"alone, keeps the current", both, newK, []mesh.Member{{Name: "me", Self: true, State: api.MemberAlive}}, newK},
		{"a peer lacks the new key", both, oldK, []mesh.Member{member("b", api.MemberAlive, oldK.ID())}, oldK},
		{"every live peer holds the new key", both, oldK, []mesh.Member{member("b", api.MemberAlive, newK.ID(), oldK.ID()), member("c", api.MemberSuspect, newK.ID())}, newK},
		{"a dead peer does not hold it back", both, oldK, []mesh.Member{member("b", api.MemberAlive, newK.ID()), member("c", api.MemberDead, oldK.ID())}, newK},
		{"back to the old key when a peer lacks the new", both, newK, []mesh.Member{member("b", api.MemberAlive, newK.ID(), oldK.ID()), member("c", api.MemberAlive, oldK.ID())}, oldK},
		{"an old-release peer means the legacy key", []*crypto.MasterKey{newK, legacy}, newK, []mesh.Member{member("b", api.MemberAlive)}, legacy},
		{"no common key keeps the current", both, newK, []mesh.Member{member("b", api.MemberAlive, "0000000000000000")}, newK},
		{"a dropped current falls back to the oldest", []*crypto.MasterKey{newK}, oldK, nil, newK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := gossipPrimary(tc.mine, tc.current, tc.members); got != tc.want {
				t.Fatalf("gossipPrimary = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPairKeyIsSymmetric(t *testing.T) {
	ks := testKeys(t, 3)
	legacy, err := crypto.LegacyPasswordKey([]byte(longPassword))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		a, b   []*crypto.MasterKey
		want   *crypto.MasterKey
		noPeer bool // b is of the previous release (advertises nothing)
	}{
		{"same single key", ks[:1], ks[:1], ks[0], false},
		{"newest both hold", ks[:2], ks[1:2], ks[1], false},
		{"both hold two, same order", ks[:2], ks[:2], ks[0], false},
		{"orders disagree: smaller ID", []*crypto.MasterKey{ks[0], ks[1]}, []*crypto.MasterKey{ks[1], ks[0]}, minID(ks[0], ks[1]), false},
		{"previous-release peer: legacy", []*crypto.MasterKey{ks[0], legacy}, nil, legacy, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var bIDs []string
			if !tc.noPeer {
				bIDs = keyIDs(tc.b)
			}
			ab := pairKey(tc.a, peerKeyIDs(tc.a, bIDs))
			if ab.ID() != tc.want.ID() {
				t.Fatalf("a picks %v, want %v", ab, tc.want)
			}
			if tc.noPeer {
				return
			}
			if ba := pairKey(tc.b, peerKeyIDs(tc.b, keyIDs(tc.a))); ba.ID() != ab.ID() {
				t.Fatalf("a picks %v, b picks %v", ab, ba)
			}
		})
	}
}

func minID(a, b *crypto.MasterKey) *crypto.MasterKey {
	if a.ID() < b.ID() {
		return a
	}
	return b
}

// Key IDs in metadata stay far below memberlist's limit, with the most
// keys a node may hold.
func TestMetaWithKeysFits(t *testing.T) {
	ids := keyIDs(testKeys(t, maxKeys))
	m := mesh.Meta{PeerID: strings.Repeat("a", 32), Version: "v1.2.3-45-gdeadbeef-dirty", PublicKey: strings.Repeat("A", 44), DPPort: 6784, Keys: ids}
	b, err := m.Encode()
	if err != nil || len(b) > mesh.MetaLimit {
		t.Fatalf("meta with %d keys: %d bytes, %v", len(ids), len(b), err)
	}
	back, err := mesh.DecodeMeta(b)
	if err != nil || !slices.Equal(back.Keys, ids) {
		t.Fatalf("round trip: %v, %v", back.Keys, err)
	}
	// A node of the previous release decodes the same JSON without the
	// field: its decoder ignores unknown names.
	var old struct {
		PeerID string `json:"id"`
	}
	if err := jsonUnmarshalStrictless(b, &old); err != nil || old.PeerID != m.PeerID {
		t.Fatalf("previous release's decoder: %+v, %v", old, err)
	}
}

func jsonUnmarshalStrictless(b []byte, v any) error { return json.Unmarshal(b, v) }
