package daemon

import (
	"encoding/base64"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

func testPrivateKey(t *testing.T, seed byte) crypto.PrivateKey {
	t.Helper()
	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = seed
	}
	raw[0] &= 248
	raw[31] = (raw[31] & 127) | 64
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := identity.LoadOrCreateWireGuardKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRememberedPeersRoundTrip: the nodes that have a peer are saved (mode
// 0600, versioned), a new run loads them and hands them to the peer
// package until the grace ends; a dead node past its grace and a left one
// are not saved; an unchanged set is not written again.
func TestRememberedPeersRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, rememberedFileName)
	log := slog.New(slog.DiscardHandler)
	now := time.Now()
	self := testPrivateKey(t, 1)
	pub := func(seed byte) crypto.Key {
		k, err := testPrivateKey(t, seed).Public()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	in := peer.Input{
		Self: "a", PrivateKey: self, ClusterRange: netip.MustParsePrefix("10.32.0.0/12"), Now: now,
		Nodes: []peer.Node{
			{Name: "a", State: api.MemberAlive},
			{Name: "b", Addr: netip.MustParseAddr("192.0.2.2"), DPPort: 6784, PublicKey: pub(2), State: api.MemberAlive},
			{Name: "c", Addr: netip.MustParseAddr("192.0.2.3"), PublicKey: pub(3), State: api.MemberDead, Since: now.Add(-time.Hour)},
			{Name: "d", Addr: netip.MustParseAddr("192.0.2.4"), PublicKey: pub(4), State: api.MemberLeft, Since: now},
		},
	}
	members := []mesh.Member{{Name: "b", Meta: mesh.Meta{Keys: []string{"k1"}}}}

	r := loadRemembered(path, now, log)
	if nodes, _ := r.input(nil); len(nodes) != 0 {
		t.Fatalf("nodes without a file: %+v", nodes)
	}
	r.save(in, members)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"format":1`) || !strings.Contains(string(b), `"keyIDs":["k1"]`) || strings.Contains(string(b), `"c"`) || strings.Contains(string(b), `"d"`) {
		t.Errorf("file: %s", b)
	}

	// Unchanged: not written again.
	if err := os.Chtimes(path, time.Unix(1, 0), time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	r.save(in, members)
	if fi, _ := os.Stat(path); !fi.ModTime().Equal(time.Unix(1, 0)) {
		t.Errorf("an unchanged set was written again")
	}

	next := loadRemembered(path, now, log)
	nodes, until := next.input(nil)
	if len(nodes) != 1 || nodes[0].Name != "b" || nodes[0].PublicKey != pub(2) || nodes[0].Addr != netip.MustParseAddr("192.0.2.2") ||
		nodes[0].DPPort != 6784 || nodes[0].State != api.MemberAlive {
		t.Fatalf("loaded %+v", nodes)
	}
	if !until.Equal(now.Add(peer.Grace)) {
		t.Errorf("until %v, want now + %v", until, peer.Grace)
	}
	next.forget()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("forget left the file: %v", err)
	}
}

// TestRememberedPeersBadFile: a file this release cannot use is ignored
// (the data plane waits for gossip, as without the file) and kept as it is.
func TestRememberedPeersBadFile(t *testing.T) {
	key, err := testPrivateKey(t, 2).Public()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, content string }{
		{"not JSON", "{"},
		{"other format", `{"format":2,"nodes":[{"name":"b","publicKey":"` + key.String() + `"}]}`},
		{"bad key", `{"format":1,"nodes":[{"name":"b","publicKey":"nope"}]}`},
		{"repeated name", `{"format":1,"nodes":[{"name":"b","publicKey":"` + key.String() + `"},{"name":"b","publicKey":"` + key.String() + `"}]}`},
		{"bad port", `{"format":1,"nodes":[{"name":"b","dpPort":70000,"publicKey":"` + key.String() + `"}]}`},
		{"too large", `{"format":1,"nodes":[],"pad":"` + strings.Repeat("x", maxRememberedBytes) + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), rememberedFileName)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			r := loadRemembered(path, time.Now(), slog.New(slog.DiscardHandler))
			if nodes, _ := r.input(nil); len(nodes) != 0 {
				t.Fatalf("used a bad file: %+v", nodes)
			}
			if b, _ := os.ReadFile(path); string(b) != tt.content {
				t.Errorf("the bad file was changed")
			}
		})
	}
}
