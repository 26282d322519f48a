package mesh

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func newSignKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestVerifyMeta(t *testing.T) {
	key := newSignKey(t)
	addr := netip.MustParseAddrPort("192.0.2.2:6783")
	meta := Meta{PeerID: "0123456789abcdef0123456789abcdef", PublicKey: "wgkey", DPPort: 6784, Keys: []string{"k1"}}
	signed, err := SignMeta(meta, key, "host2", addr)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		wire    []byte
		node    string
		addr    netip.AddrPort
		wantErr bool
		wantPub bool
	}{
		{name: "valid", wire: signed, node: "host2", addr: addr, wantPub: true},
		{name: "unsigned", wire: mustEncode(t, meta), node: "host2", addr: addr},
		{name: "other name", wire: signed, node: "host3", addr: addr, wantErr: true},
		{name: "other address", wire: signed, node: "host2", addr: netip.MustParseAddrPort("192.0.2.3:6783"), wantErr: true},
		{name: "other port", wire: signed, node: "host2", addr: netip.MustParseAddrPort("192.0.2.2:6784"), wantErr: true},
		{name: "tampered WireGuard key", wire: bytes.Replace(signed, []byte(`"wgkey"`), []byte(`"wgkez"`), 1), node: "host2", addr: addr, wantErr: true},
		{name: "tampered port", wire: bytes.Replace(signed, []byte(`"dp":6784`), []byte(`"dp":6785`), 1), node: "host2", addr: addr, wantErr: true},
		{name: "field added", wire: bytes.Replace(signed, []byte(`{`), []byte(`{"x":1,`), 1), node: "host2", addr: addr, wantErr: true},
		{name: "signature not last", wire: append(bytes.Clone(bytes.TrimSuffix(signed, []byte("}"))), []byte(`,"z":1}`)...), node: "host2", addr: addr, wantErr: true},
		{name: "signing key swapped", wire: swapKey(t, signed, key), node: "host2", addr: addr, wantErr: true},
		{name: "unknown version", wire: bytes.Replace(signed, []byte(`"sv":1`), []byte(`"sv":2`), 1), node: "host2", addr: addr, wantErr: true},
		{name: "signature without key", wire: []byte(`{"id":"x","sg":"AAAA"}`), node: "host2", addr: addr, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, pub, err := VerifyMeta(tc.wire, tc.node, tc.addr)
			if tc.wantErr {
				if err == nil || !errors.Is(err, errBadSignature) {
					t.Fatalf("VerifyMeta = %v, want a bad signature", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (pub != nil) != tc.wantPub {
				t.Fatalf("public key %x, want one: %v", pub, tc.wantPub)
			}
			if tc.wantPub && !pub.Equal(key.Public()) {
				t.Fatal("verified under another key")
			}
			if m.PeerID != meta.PeerID || m.PublicKey != meta.PublicKey {
				t.Fatalf("meta %+v", m)
			}
		})
	}
}

func mustEncode(t *testing.T, m Meta) []byte {
	t.Helper()
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// swapKey puts another key in place of the signer's: the signature of the
// first no longer verifies.
func swapKey(t *testing.T, wire []byte, key ed25519.PrivateKey) []byte {
	t.Helper()
	m, err := DecodeMeta(wire)
	if err != nil {
		t.Fatal(err)
	}
	other, err := SignMeta(Meta{}, newSignKey(t), "x", netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	om, _ := DecodeMeta(other)
	return bytes.Replace(wire, []byte(m.SignKey), []byte(om.SignKey), 1)
}

// A full path report still fits MetaLimit with the signature: WithPaths
// falls back to Overflow when the signature would not fit.
func TestSignedMetaFitsWithPaths(t *testing.T) {
	key := newSignKey(t)
	meta := Meta{PeerID: "0123456789abcdef0123456789abcdef", Version: "v1.2.3-long-version", PublicKey: strings.Repeat("A", 44), DPPort: 6784, IPAMInfos: IPAMInfosSigned}
	for i := range MaxMetaKeys {
		meta.Keys = append(meta.Keys, fmt.Sprintf("%016x", i))
	}
	meta.SignKey = "set by the daemon before WithPaths"
	var down []string
	for i := range MaxMetaDown {
		down = append(down, fmt.Sprintf("a-rather-long-node-name-%02d", i))
	}
	m := meta.WithPaths(PathMeta{Probe: "10.32.0.1", Down: down})
	// As the membership sends it (UpdateMeta).
	m.GossipRelay, m.GossipRelayAuth = int(relayVersion), int(relayAuthVersion)
	b, err := SignMeta(m, key, "host", netip.MustParseAddrPort("192.0.2.1:6783"))
	if err != nil {
		t.Fatalf("SignMeta after WithPaths: %v", err)
	}
	if len(b) > MetaLimit {
		t.Fatalf("%d bytes", len(b))
	}
	if !m.Paths.Overflow {
		t.Error("the long Down list was kept: the test does not test the fitting")
	}
}

// Whatever the length of the path report, what the membership sends
// (the report, the gossip relay fields it adds, the signature) fits
// MetaLimit: WithPaths falls back to Overflow at the right length, not
// one field too late.
func TestSignedMetaFitsAtEveryLength(t *testing.T) {
	key := newSignKey(t)
	meta := Meta{PeerID: "0123456789abcdef0123456789abcdef", Version: "v1.2.3-long-version", PublicKey: strings.Repeat("A", 44), DPPort: 6784, IPAMInfos: IPAMInfosSigned}
	for i := range MaxMetaKeys {
		meta.Keys = append(meta.Keys, fmt.Sprintf("%016x", i))
	}
	meta.SignKey = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey)) // as the daemon sets it before WithPaths
	// fitsAlways signs meta with every path report and counts the reports
	// that kept their Down list.
	fitsAlways := func(meta Meta) (kept int) {
		for n := 1; n <= MaxMetaDown; n++ {
			for size := 1; size <= 40; size++ {
				var down []string
				for i := range n {
					down = append(down, fmt.Sprintf("%0*d", size, i))
				}
				m := meta.WithPaths(PathMeta{Probe: "10.32.0.1", Down: down})
				m.GossipRelay, m.GossipRelayAuth = int(relayVersion), int(relayAuthVersion)
				b, err := SignMeta(m, key, "host", netip.MustParseAddrPort("192.0.2.1:6783"))
				if err != nil || len(b) > MetaLimit {
					t.Fatalf("%d names of %d characters: %d bytes, %v", n, size, len(b), err)
				}
				if !m.Paths.Overflow {
					kept++
				}
			}
		}
		return kept
	}
	if kept := fitsAlways(meta); kept == 0 || kept == MaxMetaDown*40 {
		t.Fatalf("%d reports kept their Down list: the test does not reach the limit", kept)
	}
	// A node behind NAT: the membership sets its home and public address
	// before it fits the path report (updateMetaLocked). With this many
	// keys neither its public address nor all key IDs fit, but its home
	// and newest key do.
	meta.Home = "home-node-01"
	meta.PublicAddr = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
	meta.PublicPort = 65535
	fitsAlways(meta)
	if m := meta.WithPaths(PathMeta{Probe: "10.32.0.1"}); m.PublicAddr != "" || m.PublicPort != 0 || m.Home == "" || len(m.Keys) == 0 || m.Keys[0] != meta.Keys[0] {
		t.Fatalf("with %d keys: home %q, public address %q port %d, keys %v; want the home and the newest key kept, the public address and its port given up", len(meta.Keys), m.Home, m.PublicAddr, m.PublicPort, m.Keys)
	}
}

// TestWithPathsKeepsPublicAddr: a node behind NAT keeps its public address
// when it fits, and gives it up before its list of broken paths.
func TestWithPathsKeepsPublicAddr(t *testing.T) {
	key := newSignKey(t)
	meta := Meta{PeerID: "0123456789abcdef0123456789abcdef", Version: "v1.2.3", PublicKey: strings.Repeat("A", 44), DPPort: 6784,
		Keys: []string{"0123456789abcdef"}, Home: "host1", PublicAddr: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", PublicPort: 65535}
	meta.SignKey = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	if m := meta.WithPaths(PathMeta{Probe: "10.32.0.1", Down: []string{"host2"}}); m.PublicAddr != meta.PublicAddr || m.PublicPort != meta.PublicPort || m.Paths.Overflow {
		t.Fatalf("public address %q port %d, overflow %v: want all kept", m.PublicAddr, m.PublicPort, m.Paths.Overflow)
	}
	// Long names fill the report: the public address goes first.
	for size := 1; size <= 60; size++ {
		var down []string
		for i := range MaxMetaDown {
			down = append(down, fmt.Sprintf("%0*d", size, i))
		}
		m := meta.WithPaths(PathMeta{Probe: "10.32.0.1", Down: down})
		if !m.Paths.Overflow && !m.fits() {
			t.Fatalf("names of %d: does not fit", size)
		}
		if (m.PublicAddr == "") != (m.PublicPort == 0) {
			t.Fatalf("names of %d: public address %q and port %d: given up apart", size, m.PublicAddr, m.PublicPort)
		}
		if m.Paths.Overflow && m.PublicAddr == "" {
			if withPublic := m; withPublic.fits() {
				withPublic.PublicAddr, withPublic.PublicPort = meta.PublicAddr, meta.PublicPort
				if withPublic.fits() {
					t.Fatalf("names of %d: the public address was given up although it fits beside the overflowed report", size)
				}
			}
		}
		if !m.Paths.Overflow && m.PublicAddr == "" {
			continue // given up for the list: allowed
		}
		if m.Paths.Overflow {
			withoutPublic := meta
			withoutPublic.PublicAddr, withoutPublic.PublicPort = "", 0
			if w := withoutPublic.WithPaths(PathMeta{Probe: "10.32.0.1", Down: down}); !w.Paths.Overflow {
				t.Fatalf("names of %d: the list overflowed although giving up the public address would have kept it", size)
			}
		}
	}
}
