package mesh

import (
	"bytes"
	"io"
	"log"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// waitStat waits until stat() reaches want, for at most 5 s, and fails
// the test if it does not or goes beyond it.
func waitStat(t *testing.T, what string, stat func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for stat() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := stat(); got != want {
		t.Fatalf("%s = %d, want %d", what, got, want)
	}
}

func noStream(t *testing.T, n *relayNode, within time.Duration) {
	t.Helper()
	select {
	case s := <-n.t.StreamCh():
		s.Close()
		t.Fatalf("%s's memberlist was handed a stream from %v", n.name, s.RemoteAddr())
	case <-time.After(within):
	}
}

// TestRelayRefusesUnauthenticatedEnvelopes: once no node of the previous
// release is live, a relay forwards, and a target takes, only envelopes
// whose tag a holder of the mesh key made over their target, origin and
// payload. Each case is what someone without the key, or with a captured
// envelope, could send.
func TestRelayRefusesUnauthenticatedEnvelopes(t *testing.T) {
	a, b, c := relayTriple(t)
	otherKey := relayMACKey(bytes.Repeat([]byte{9}, 32))
	goodKey := relayMACKey(testGossipKey)
	hdr := func(target, origin string, tag []byte) envelopeHeader {
		return envelopeHeader{ttl: relayTTL, target: target, origin: origin, tag: tag}
	}
	origin := a.addr
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"no tag", b.t.envelope(kindPacket, hdr("c", origin, nil), false, []byte("x"))},
		{"no tag, for the relay itself", b.t.envelope(kindPacket, hdr("b", origin, nil), false, []byte("x"))},
		{"tag of another key", b.t.envelope(kindPacket, hdr("c", origin, envelopeTag(otherKey, kindPacket, "c", origin, []byte("x"))), true, []byte("x"))},
		{"payload changed", b.t.envelope(kindPacket, hdr("c", origin, envelopeTag(goodKey, kindPacket, "c", origin, []byte("x"))), true, []byte("y"))},
		{"target changed", b.t.envelope(kindPacket, hdr("c", origin, envelopeTag(goodKey, kindPacket, "a", origin, []byte("x"))), true, []byte("x"))},
		{"origin changed", b.t.envelope(kindPacket, hdr("c", "127.0.0.1:9", envelopeTag(goodKey, kindPacket, "c", origin, []byte("x"))), true, []byte("x"))},
		{"a stream's tag on a packet", b.t.envelope(kindPacket, hdr("c", origin, envelopeTag(goodKey, kindStream, "c", origin, nil)), true, nil)},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := a.t.inner.WriteTo(tc.pkt, b.addr); err != nil {
				t.Fatal(err)
			}
			waitStat(t, "b's refused envelopes", func() uint64 { return b.t.stats().Refused }, uint64(i+1))
			if p := recvPacket(t, c, 100*time.Millisecond); p != nil {
				t.Fatalf("c received %q", p.Buf)
			}
			if p := recvPacket(t, b, 100*time.Millisecond); p != nil {
				t.Fatalf("b handed memberlist %q", p.Buf)
			}
		})
	}
	if s := b.t.stats(); s.Forwarded != 0 || s.Dropped != 0 {
		t.Fatalf("b's stats %+v, want nothing forwarded and every refusal counted as refused", s)
	}

	// A valid envelope whose TTL relays lowered on the way still passes:
	// the TTL is outside the tag.
	h := hdr("c", origin, nil)
	h.ttl = 3
	if _, err := a.t.inner.WriteTo(a.t.envelope(kindPacket, h, true, []byte("ok")), b.addr); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, c, 5*time.Second); p == nil || string(p.Buf) != "ok" {
		t.Fatalf("c received %+v, want the authenticated packet", p)
	}
	// The relay counts after its write, so c may see the packet first.
	waitStat(t, "b's forwarded envelopes", func() uint64 { return b.t.stats().Forwarded }, 1)

	// Streams: the header's tag decides before anything is dialled.
	streams := []struct {
		name   string
		header []byte
	}{
		{"stream without a tag", b.t.envelope(kindStream, hdr("c", origin, nil), false, nil)},
		{"stream with another key's tag", b.t.envelope(kindStream, hdr("c", origin, envelopeTag(otherKey, kindStream, "c", origin, nil)), true, nil)},
		{"stream with a packet's tag", b.t.envelope(kindStream, hdr("c", origin, envelopeTag(goodKey, kindPacket, "c", origin, nil)), true, nil)},
	}
	refused := b.t.stats().Refused
	for i, tc := range streams {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(append(tc.header, "push"...)); err != nil {
				t.Fatal(err)
			}
			waitStat(t, "b's refused envelopes", func() uint64 { return b.t.stats().Refused }, refused+uint64(i+1))
			noStream(t, c, 100*time.Millisecond)
			noStream(t, b, 100*time.Millisecond)
			// The relay closed the stream.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := conn.Read(make([]byte, 1)); err == nil {
				t.Fatalf("the refused stream stayed open (read %d bytes)", n)
			}
		})
	}
	if s := b.t.stats(); s.Forwarded != 1 {
		t.Fatalf("b's stats %+v, want no stream forwarded", s)
	}
}

// TestRelayUpgradeWindow: while a node of the previous release (which
// knows only envelopes without a tag) is live, such envelopes are still
// relayed, a node of this release passes them on with a tag of its own,
// and an envelope for an old node is sent without one.
func TestRelayUpgradeWindow(t *testing.T) {
	a, b, c := relayTriple(t)
	tab := *b.t.table.Load()
	tab.acceptV1 = true
	b.t.setTable(&tab)
	old := b.t.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "c", origin: a.addr}, false, []byte("from an old node"))
	if old[1] != relayVersion {
		t.Fatalf("envelope version %d, want %d", old[1], relayVersion)
	}
	if _, err := a.t.inner.WriteTo(old, b.addr); err != nil {
		t.Fatal(err)
	}
	// c itself accepts no untagged envelope (its window is closed), so it
	// takes this one only because b tagged it.
	if p := recvPacket(t, c, 5*time.Second); p == nil || string(p.Buf) != "from an old node" {
		t.Fatalf("c received %+v, want the old node's packet tagged by b", p)
	}
	if s := c.t.stats(); s.Refused != 0 {
		t.Fatalf("c refused %d envelopes", s.Refused)
	}

	// An old node as the target: a plain NetTransport reads the envelope
	// memberlist-style, so what reaches it must be version 1.
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}, Logger: log.New(io.Discard, "", 0)})
	if err != nil {
		t.Fatal(err)
	}
	defer nt.Shutdown()
	oldAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(nt.GetAutoBindPort()))
	// A new table: the one installed above is b's, read by its
	// goroutines, and must not be written to.
	tab2 := *b.t.table.Load()
	tab2.addrs = map[string]string{"a": a.addr, "c": c.addr, "old": oldAddr}
	tab2.auth = map[string]bool{"a": true, "c": true}
	b.t.setTable(&tab2)
	a.t.setTable(&relayTable{via: map[string]relayHop{"old": {"b", b.addr, true}}, addrs: map[string]string{"b": b.addr, "old": oldAddr}, auth: map[string]bool{"b": true}})
	if _, err := a.t.WriteToAddress([]byte("to an old node"), memberlist.Address{Addr: oldAddr, Name: "old"}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-nt.PacketCh():
		h, err := readEnvelope(&byteReader{b: p.Buf})
		if err != nil || h.version != relayVersion || h.tag != nil || h.target != "old" {
			t.Fatalf("the old node received header %+v (%v), want version %d without a tag", h, err, relayVersion)
		}
		if !bytes.HasSuffix(p.Buf, []byte("to an old node")) {
			t.Fatalf("the old node received %q", p.Buf)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the old node received nothing")
	}
}

// TestRelayKeyRotation: during `mesh rotate` nodes tag with different
// primary keys; envelopes flow as long as the receiver holds the key, as
// memberlist's own messages do, and a key the mesh never had is refused.
func TestRelayKeyRotation(t *testing.T) {
	oldKey, newKey := testGossipKey, bytes.Repeat([]byte{8}, 32)
	a := newRelayNodeKeys(t, "a", newKey, oldKey) // already switched
	b := newRelayNodeKeys(t, "b", oldKey, newKey) // not yet
	c := newRelayNodeKeys(t, "c", oldKey, newKey)
	linkTriple(a, b, c, true)
	if _, err := a.t.WriteToAddress([]byte("new key"), memberlist.Address{Addr: c.addr, Name: "c"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, c, 5*time.Second); p == nil || string(p.Buf) != "new key" {
		t.Fatalf("c received %+v, want the packet tagged with the new key", p)
	}
	if _, err := c.t.WriteToAddress([]byte("old key"), memberlist.Address{Addr: a.addr, Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, a, 5*time.Second); p == nil || string(p.Buf) != "old key" {
		t.Fatalf("a received %+v, want the packet tagged with the old key", p)
	}
	stranger := newRelayNodeKeys(t, "a", bytes.Repeat([]byte{9}, 32))
	stranger.t.setTable(&relayTable{via: map[string]relayHop{"c": {"b", b.addr, true}}, addrs: map[string]string{"b": b.addr, "c": c.addr}, auth: map[string]bool{"b": true, "c": true}})
	if _, err := stranger.t.WriteToAddress([]byte("stranger"), memberlist.Address{Addr: c.addr, Name: "c"}); err != nil {
		t.Fatal(err)
	}
	waitStat(t, "b's refused envelopes", func() uint64 { return b.t.stats().Refused }, 1)
	if p := recvPacket(t, c, 100*time.Millisecond); p != nil {
		t.Fatalf("c received %q from a node without the mesh's keys", p.Buf)
	}
}

// TestRelayWithoutGossipKey: a mesh without gossip encryption (--insecure)
// has no key to tag with; its envelopes go without a tag and are taken.
func TestRelayWithoutGossipKey(t *testing.T) {
	a, b, c := newRelayNodeKeys(t, "a"), newRelayNodeKeys(t, "b"), newRelayNodeKeys(t, "c")
	linkTriple(a, b, c, false)
	if _, err := a.t.WriteToAddress([]byte("insecure"), memberlist.Address{Addr: c.addr, Name: "c"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, c, 5*time.Second); p == nil || string(p.Buf) != "insecure" {
		t.Fatalf("c received %+v", p)
	}
	waitStat(t, "b's forwarded envelopes", func() uint64 { return b.t.stats().Forwarded }, 1)
	if s := b.t.stats(); s.Refused != 0 {
		t.Fatalf("b's stats %+v, want the untagged packet taken", s)
	}
}

// TestSetRelaysUpgradeWindow: with a gossip key, members read
// authenticated envelopes and untagged ones are refused, until a member
// announces the gossip relay without authentication (the previous
// release): then it is sent untagged envelopes and untagged ones are
// accepted, until it is gone.
func TestSetRelaysUpgradeWindow(t *testing.T) {
	a := startWith(t, testConfig(t, "a", testGossipKey))
	b := startWith(t, testConfig(t, "b", testGossipKey, a.LocalAddr().String()))
	waitWithin(t, 10*time.Second, "a sees b alive", func() bool { return a.IsMember("b") })
	a.SetRelays(map[string]string{"c": "b"})
	tab := a.relay.table.Load()
	if !tab.auth["b"] || !tab.via["c"].auth || tab.acceptV1 {
		t.Fatalf("table %+v: want b reading authenticated envelopes and untagged ones refused", tab)
	}
	a.mu.Lock()
	a.members["b"].Meta.GossipRelayAuth = 0 // as the previous release announces
	a.mu.Unlock()
	a.SetRelays(map[string]string{"c": "b"})
	tab = a.relay.table.Load()
	if tab.auth["b"] || tab.via["c"].auth || !tab.acceptV1 {
		t.Fatalf("table %+v: want b sent untagged envelopes and untagged ones accepted", tab)
	}
	b.Close()
	waitWithin(t, 20*time.Second, "a sees b gone", func() bool { return !a.IsMember("b") })
	a.SetRelays(nil)
	if tab := a.relay.table.Load(); tab.acceptV1 {
		t.Fatal("untagged envelopes still accepted after the last node of the previous release left")
	}
}
