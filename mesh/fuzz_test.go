package mesh

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// Inputs from the network that these targets feed: node metadata comes from
// any holder of the mesh key; envelopes, frames and streams arrive on the
// gossip port from anyone who can reach it. None may panic, and what is
// accepted must stay within the documented bounds.

// FuzzDecodeMeta: metadata either fails with an error or comes back
// within the bounds DecodeMeta promises.
func FuzzDecodeMeta(f *testing.F) {
	good, err := Meta{PeerID: "0123456789abcdef", PublicKey: "x", DPPort: 6784, Keys: []string{"a", "b"},
		Paths: &PathMeta{Version: PathMetaVersion, Down: []string{"b"}, Preference: 3}}.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"p":{"v":1,"d":null,"pr":-1000000}}`))
	f.Add([]byte(`{"k":[` + string(bytes.Repeat([]byte(`"k",`), 40)) + `"k"]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		if len(m.Keys) > MaxMetaKeys {
			t.Fatalf("%d keys accepted, at most %d", len(m.Keys), MaxMetaKeys)
		}
		if p := m.Paths; p != nil {
			if p.Version != PathMetaVersion {
				t.Fatalf("path report of version %d kept", p.Version)
			}
			if len(p.Down) > MaxMetaDown {
				t.Fatalf("%d down paths accepted, at most %d", len(p.Down), MaxMetaDown)
			}
			if p.Preference > MaxRelayPreference || p.Preference < -MaxRelayPreference {
				t.Fatalf("relay preference %d beyond ±%d", p.Preference, MaxRelayPreference)
			}
		}
	})
}

// FuzzReadEnvelope: a header is read, or the input is refused with
// errEnvelope; a header read holds a known version, a target, and a tag
// exactly when the version has one.
func FuzzReadEnvelope(f *testing.F) {
	rt := &relayTransport{}
	f.Add(rt.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "c", origin: "127.0.0.1:1"}, false, []byte("payload")))
	f.Add(rt.envelope(kindPacket, envelopeHeader{ttl: 1, target: "c", tag: bytes.Repeat([]byte{1}, relayTagLen)}, true, nil))
	f.Add([]byte{relayMagic, relayAuthVersion, 3, 1, 'x', 0})
	f.Add([]byte{relayMagic})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readEnvelope(&byteReader{b: b})
		if err != nil {
			if !errors.Is(err, errEnvelope) {
				t.Fatalf("error %v is not errEnvelope", err)
			}
			return
		}
		if h.version != relayVersion && h.version != relayAuthVersion {
			t.Fatalf("envelope of version %d read", h.version)
		}
		if h.target == "" {
			t.Fatal("envelope without a target read")
		}
		if (h.version == relayAuthVersion) != (len(h.tag) == relayTagLen) || (h.version == relayVersion && h.tag != nil) {
			t.Fatalf("version %d with a tag of %d bytes", h.version, len(h.tag))
		}
	})
}

// FuzzReadFrame: a frame is exactly as long as its header says.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{1, 0, 3, 'a', 'b', 'c'})
	f.Add([]byte{1, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, p, err := readFrame(bytes.NewReader(b))
		if err != nil {
			return
		}
		if want := int(binary.BigEndian.Uint16(b[1:3])); len(p) != want {
			t.Fatalf("frame of %d bytes, header says %d", len(p), want)
		}
	})
}

// FuzzRelayPacket: a node holding the mesh key delivers to memberlist
// only envelopes for itself that one of its keys tagged; anything else is
// dropped or refused, never delivered and never a panic.
func FuzzRelayPacket(f *testing.F) {
	n := newRelayNode(f, "self")
	f.Add(n.t.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "self", origin: "127.0.0.1:1"}, true, []byte("ping")))
	f.Add(n.t.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "self", origin: "127.0.0.1:1"}, false, []byte("untagged")))
	f.Add(n.t.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "other", origin: "x"}, true, nil))
	f.Add([]byte{relayMagic, relayAuthVersion, 0, 4, 's', 'e', 'l', 'f'})
	from := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 || b[0] != relayMagic {
			return // not an envelope: packets() hands it to memberlist as it is
		}
		p := n.t.relayPacket(&memberlist.Packet{Buf: b, From: from})
		if p == nil {
			return
		}
		r := &byteReader{b: b}
		h, err := readEnvelope(r)
		if err != nil || h.target != "self" || !taggedByAny(envelopeKeys(n.t.keyring), h.tag, kindPacket, h.target, h.origin, r.b) {
			t.Fatalf("delivered %q from an envelope that is not this node's and tagged (%+v, %v)", p.Buf, h, err)
		}
	})
}

// FuzzRelayStream: whatever a stream on the gossip port starts with
// (envelope, attachment, reachability check or garbage), the node
// handles it and lets go of it within its header timeout, and only a
// stream that is no envelope, or an authenticated one for this node,
// reaches memberlist.
func FuzzRelayStream(f *testing.F) {
	n := newRelayNode(f, "self")
	f.Add(n.t.envelope(kindStream, envelopeHeader{ttl: relayTTL, target: "self", origin: "127.0.0.1:1"}, true, nil))
	f.Add(n.t.envelope(kindStream, envelopeHeader{ttl: relayTTL, target: "other", origin: "x"}, false, nil))
	f.Add([]byte{relayMagic, attachVersion, 4, 'e', 'v', 'i', 'l', 0, 0})
	f.Add(append([]byte{relayMagic, reachVersion}, make([]byte, reachNonceLen+1)...))
	f.Add([]byte{relayMagic, reachBackVersion, 1, 2, 3})
	f.Add([]byte{relayMagic, reverseVersion, 1})
	f.Add([]byte("memberlist's own stream"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, peer := net.Pipe()
		go func() {
			_ = peer.SetWriteDeadline(time.Now().Add(2 * time.Second))
			_, _ = peer.Write(b)
			peer.Close()
		}()
		done := make(chan struct{})
		go func() {
			defer close(done)
			n.t.stream(c)
		}()
		deadline := time.After(relayHeaderTimeout + 5*time.Second)
		for {
			select {
			case got := <-n.t.streamCh:
				got.Close()
				if len(b) > 0 && b[0] == relayMagic {
					h, err := readEnvelope(&byteReader{b: b})
					if err != nil || h.target != "self" || !n.t.authentic(kindStream, h, nil) {
						t.Fatalf("stream %q reached memberlist (%+v, %v)", b, h, err)
					}
				}
			case <-done:
				return
			case <-deadline:
				t.Fatalf("stream %q still held after %v", b, relayHeaderTimeout+5*time.Second)
			}
		}
	})
}
