package mesh

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/meshnet/mesh/api"
)

var testAddr = netip.MustParseAddrPort("192.0.2.2:6783")

func signedNode(t testing.TB, name string, key ed25519.PrivateKey) *memberlist.Node {
	t.Helper()
	n := &memberlist.Node{Name: name, Addr: net.IP(testAddr.Addr().AsSlice()), Port: testAddr.Port()}
	if key == nil {
		n.Meta = []byte(`{"id":"old"}`)
		return n
	}
	b, err := SignMeta(Meta{PeerID: "id-" + name}, key, name, testAddr)
	if err != nil {
		t.Fatal(err)
	}
	n.Meta = b
	return n
}

func TestNameBinding(t *testing.T) {
	k1, k2 := newSignKey(t), newSignKey(t)
	tampered := signedNode(t, "b", k1)
	tampered.Meta = []byte(strings.Replace(string(tampered.Meta), "id-b", "id-x", 1))
	steps := []struct {
		name       string
		node       *memberlist.Node
		forget     string
		wantErr    string // empty: accepted
		wantReason string
	}{
		{name: "first identity binds", node: signedNode(t, "b", k1)},
		{name: "same identity accepted", node: signedNode(t, "b", k1)},
		{name: "other identity refused", node: signedNode(t, "b", k2), wantErr: "other-identity", wantReason: RefusedOtherKey},
		{name: "unsigned refused for a bound name", node: signedNode(t, "b", nil), wantErr: "unsigned", wantReason: RefusedUnsigned},
		{name: "tampered refused", node: tampered, wantErr: "bad-signature", wantReason: RefusedBadSignature},
		{name: "garbage refused for a bound name", node: &memberlist.Node{Name: "b", Meta: []byte("{")}, wantErr: "bad-signature", wantReason: RefusedBadSignature},
		{name: "unsigned accepted for an unbound name", node: signedNode(t, "old", nil)},
		{name: "own name not judged here", node: signedNode(t, "a", k2)},
		{name: "other identity accepted after forget", node: signedNode(t, "b", k2), forget: "b"},
		{name: "first identity now refused", node: signedNode(t, "b", k1), wantErr: "other-identity", wantReason: RefusedOtherKey},
	}
	path := filepath.Join(t.TempDir(), "identities.json")
	b, err := newBindings(path, "a", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.forget != "" {
				if ok, err := b.forget(s.forget); !ok || err != nil {
					t.Fatalf("forget = %v, %v", ok, err)
				}
				if len(b.problems()) != 0 {
					t.Errorf("problems after forget: %v", b.problems())
				}
			}
			before := b.refusals()[s.wantReason]
			err := b.NotifyAlive(s.node)
			if s.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Fatalf("NotifyAlive = %v, want a refusal %q", err, s.wantErr)
			}
			if got := b.refusals()[s.wantReason]; got != before+1 {
				t.Errorf("refusals[%s] = %d, want %d", s.wantReason, got, before+1)
			}
			if p := b.problems(); len(p) != 1 || !strings.Contains(p[0], "refused node "+s.node.Name) {
				t.Errorf("problems %q, want the name once", p)
			}
		})
	}
	// The binding survives a restart.
	again, err := newBindings(path, "a", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := again.NotifyAlive(signedNode(t, "b", k1)); err == nil {
		t.Error("a reloaded table accepted the released identity")
	}
	if err := again.NotifyAlive(signedNode(t, "b", k2)); err != nil {
		t.Errorf("a reloaded table refused the bound identity: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("bindings file: %v, mode %v; want 0600", err, fi.Mode())
	}
}

func TestNameBindingTableBounded(t *testing.T) {
	b, err := newBindings("", "a", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	k := newSignKey(t)
	for i := range maxBindings {
		if err := b.NotifyAlive(signedNode(t, fmt.Sprintf("n%d", i), k)); err != nil {
			t.Fatal(err)
		}
	}
	err = b.NotifyAlive(signedNode(t, "one-too-many", k))
	if err == nil || !strings.Contains(err.Error(), RefusedTableFull) {
		t.Fatalf("NotifyAlive beyond the bound = %v, want %s", err, RefusedTableFull)
	}
	if len(b.table) != maxBindings {
		t.Fatalf("%d bindings, want %d", len(b.table), maxBindings)
	}
	if err := b.NotifyAlive(signedNode(t, "n0", k)); err != nil {
		t.Errorf("a bound name refused when the table is full: %v", err)
	}
}

func TestCorruptBindingsStopStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identities.json")
	if err := os.WriteFile(path, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Name = "a"
	cfg.BindingsFile = path
	cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	cfg.Port = freePort(t)
	if m, err := New(cfg); err == nil {
		m.Close()
		t.Fatal("started with a corrupt bindings file")
	} else if !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v does not name the file", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "{garbage" {
		t.Error("the corrupt file was changed")
	}
}

func startSignedNode(t *testing.T, name string, key []byte, targets ...string) *Membership {
	t.Helper()
	cfg := testConfig(t, name, key, targets...)
	cfg.BindingsFile = t.TempDir() + "/identities.json"
	cfg.SigningKey = newSignKey(t)
	return startWith(t, cfg)
}

func waitLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 90*time.Second, what, cond)
}

// A node started under a bound name with another identity (a fresh state
// dir) is kept out of the member list, counted and named, until the
// binding is released.
func TestNameTakeoverRefused(t *testing.T) {
	key := make([]byte, 32)
	a := startSignedNode(t, "a", key)
	b := startSignedNode(t, "b", key, a.LocalAddr().String())
	c := startSignedNode(t, "c", key, a.LocalAddr().String())
	for _, m := range []*Membership{a, c} {
		waitFor(t, "b alive and signed", func() bool {
			for _, mem := range m.Members() {
				if mem.Name == "b" && mem.State == api.MemberAlive && mem.Identity != "" {
					return true
				}
			}
			return false
		})
	}
	bIdentity := ""
	for _, mem := range a.Members() {
		if mem.Name == "b" {
			bIdentity = mem.Identity
		}
	}
	b.Close()
	waitLong(t, "b dead on a", func() bool { return states(a)["b"] == string(api.MemberDead) })

	thief := startSignedNode(t, "b", key, a.LocalAddr().String(), c.LocalAddr().String())
	waitLong(t, "a and c to refuse the new identity of b", func() bool {
		return a.IdentityRefusals()[RefusedOtherKey] > 0 && c.IdentityRefusals()[RefusedOtherKey] > 0
	})
	// Long enough for memberlist's dead-node reclaim time and a state
	// exchange: the name must still not be taken.
	time.Sleep(20 * time.Second)
	for _, m := range []*Membership{a, c} {
		if s := states(m)["b"]; s != string(api.MemberDead) {
			t.Fatalf("b is %s on %s after the takeover attempt, want dead", s, m.cfg.Name)
		}
		p := m.IdentityProblems()
		if len(p) != 1 || !strings.Contains(p[0], "refused node b") {
			t.Fatalf("problems on %s: %q, want b named once", m.cfg.Name, p)
		}
	}

	for _, m := range []*Membership{a, c} {
		if ok, err := m.ForgetIdentity("b"); !ok || err != nil {
			t.Fatalf("ForgetIdentity on %s = %v, %v", m.cfg.Name, ok, err)
		}
	}
	waitLong(t, "the new identity of b accepted after the release", func() bool {
		for _, m := range []*Membership{a, c} {
			ok := false
			for _, mem := range m.Members() {
				ok = ok || (mem.Name == "b" && mem.State == api.MemberAlive && mem.Identity != "" && mem.Identity != bIdentity)
			}
			if !ok {
				return false
			}
		}
		return true
	})
	_ = thief
	if _, err := a.ForgetIdentity("a"); err == nil {
		t.Error("a node forgot its own name's binding")
	}
}

// TestVerifiedMetaRemembered: metadata already checked for the same name
// and address is not checked again (every state exchange repeats every
// member's), while a change of bytes or address is, so a signature made
// for another address or over other bytes is still refused.
func TestVerifiedMetaRemembered(t *testing.T) {
	k := newSignKey(t)
	b, err := newBindings("", "a", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	n := signedNode(t, "b", k)
	for range 5 {
		if err := b.NotifyAlive(n); err != nil {
			t.Fatalf("refused: %v", err)
		}
	}
	if b.checks != 1 {
		t.Fatalf("%d signature checks for the same metadata five times, want 1", b.checks)
	}
	moved := *n
	moved.Addr = net.ParseIP("192.0.2.99")
	if err := b.NotifyAlive(&moved); err == nil || !strings.Contains(err.Error(), RefusedBadSignature) {
		t.Fatalf("the same signed metadata from another address: %v, want refused as %s", err, RefusedBadSignature)
	}
	tampered := *n
	tampered.Meta = []byte(strings.Replace(string(n.Meta), "id-b", "id-x", 1))
	if err := b.NotifyAlive(&tampered); err == nil || !strings.Contains(err.Error(), RefusedBadSignature) {
		t.Fatalf("tampered metadata after a good one: %v, want refused as %s", err, RefusedBadSignature)
	}
	if b.checks != 3 {
		t.Fatalf("%d signature checks, want 3 (each change checked)", b.checks)
	}
	// The good one is still remembered.
	if err := b.NotifyAlive(n); err != nil || b.checks != 3 {
		t.Fatalf("the remembered metadata again: %v after %d checks, want accepted without a fourth", err, b.checks)
	}
}

// TestVerifiedMetaBounded: the remembered checks stay within maxBindings.
func TestVerifiedMetaBounded(t *testing.T) {
	k := newSignKey(t)
	b, err := newBindings("", "a", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxBindings + 10 {
		if _, err := b.verify(signedNode(t, fmt.Sprintf("n%d", i), k).Meta, fmt.Sprintf("n%d", i), testAddr); err != nil {
			t.Fatal(err)
		}
		if len(b.verified) > maxBindings {
			t.Fatalf("%d remembered after %d names, bound %d", len(b.verified), i+1, maxBindings)
		}
	}
}
