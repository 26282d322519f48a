package daemon

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"
)

// signedMember starts a membership named name on loopback that signs its
// metadata with key (nil: unsigned, as the previous release) and says ii
// of signed IPAM infos.
func signedMember(t *testing.T, name string, key ed25519.PrivateKey, ii int, targets ...string) (*mesh.Membership, mesh.Meta) {
	t.Helper()
	cfg := mesh.DefaultConfig()
	cfg.Name = name
	cfg.Meta = mesh.Meta{PeerID: fmt.Sprintf("%032x", len(name)), IPAMInfos: ii}
	cfg.SigningKey = key
	cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.Port = 0
	cfg.Targets = targets
	cfg.RetryMin, cfg.RetryMax = 100*time.Millisecond, 500*time.Millisecond
	cfg.RememberedFile = filepath.Join(t.TempDir(), "peers.json")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := mesh.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	m.Start()
	return m, cfg.Meta
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIPAMIdentities: the daemon's ipam.Identities on real memberships
// over loopback. Signatures verify against this node's own key and the
// identity bound to a name; what a member says of signed infos in its
// metadata decides AllRead, SendsUnsigned and ReadsSigned; a member of the
// previous release holds signed states back, also for a while after it
// left.
func TestIPAMIdentities(t *testing.T) {
	ka, kb := newKey(t), newKey(t)
	a, _ := signedMember(t, "a", ka, mesh.IPAMInfosRead)
	b, metaB := signedMember(t, "b", kb, mesh.IPAMInfosRead, a.LocalAddr().String())
	ids := &ipamIdentities{self: "a", key: ka, members: a}
	if ids.AllRead() {
		t.Fatal("AllRead with no other member known")
	}
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if !ids.AllRead() {
			return fmt.Errorf("AllRead false with b live and reading: %+v", a.Members())
		}
		return nil
	})
	if !ids.SendsUnsigned("b") || !ids.ReadsSigned("b") {
		t.Fatal("b says it reads but does not send signed infos: SendsUnsigned and ReadsSigned must hold")
	}

	msg := []byte("an info")
	for _, tc := range []struct {
		name, signer string
		sig          []byte
		want         error
	}{
		{"by b, verified with b's bound identity", "b", ed25519.Sign(kb, msg), nil},
		{"this node's own", "a", ed25519.Sign(ka, msg), nil},
		{"b's name, another key", "b", ed25519.Sign(ka, msg), ipam.ErrBadSignature},
		{"a name bound to no identity", "nobody", ed25519.Sign(kb, msg), ipam.ErrUnknownSigner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ids.Verify(tc.signer, msg, tc.sig)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}

	metaB.IPAMInfos = mesh.IPAMInfosSigned
	if err := b.UpdateMeta(metaB); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if ids.SendsUnsigned("b") || !ids.ReadsSigned("b") {
			return fmt.Errorf("b says it signs, but a sees it sending unsigned or not reading")
		}
		return nil
	})

	c, _ := signedMember(t, "c", nil, 0, a.LocalAddr().String())
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if ids.AllRead() {
			return fmt.Errorf("AllRead with c of the previous release live")
		}
		return nil
	})
	if !ids.SendsUnsigned("c") || ids.ReadsSigned("c") {
		t.Fatal("c of the previous release: SendsUnsigned must hold, ReadsSigned not")
	}
	if err := ids.Verify("c", msg, ed25519.Sign(kb, msg)); !errors.Is(err, ipam.ErrUnknownSigner) {
		t.Fatalf("Verify of unsigned c = %v, want ErrUnknownSigner", err)
	}
	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if m, ok := a.Member("c"); !ok || m.State.Live() {
			return fmt.Errorf("c still live")
		}
		return nil
	})
	if ids.AllRead() {
		t.Fatal("AllRead right after c of the previous release left: it may come back within signedInfosGrace")
	}
}
