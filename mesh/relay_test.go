package mesh

import (
	"bytes"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/meshnet/mesh/api"
)

// relayNode is one relayTransport on a loopback port.
type relayNode struct {
	name string
	t    *relayTransport
	addr string
}

// testGossipKey is the gossip key of the relay tests' mesh.
var testGossipKey = bytes.Repeat([]byte{7}, 32)

// newRelayNode starts a node holding testGossipKey.
func newRelayNode(t testing.TB, name string) *relayNode {
	t.Helper()
	return newRelayNodeKeys(t, name, testGossipKey)
}

// newRelayNodeKeys starts a node whose keyring holds keys, the first
// primary; none: a mesh without gossip encryption.
func newRelayNodeKeys(t testing.TB, name string, keys ...[]byte) *relayNode {
	t.Helper()
	var o relayOptions
	if len(keys) > 0 {
		o.keyring = newTestKeyring(t, keys...)
	}
	return newRelayNodeOpts(t, name, o)
}

// newTestKeyring is a keyring of keys (at least one), the first primary.
func newTestKeyring(t testing.TB, keys ...[]byte) *memberlist.Keyring {
	t.Helper()
	kr, err := memberlist.NewKeyring(keys[1:], keys[0])
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// newRelayNodeOpts starts a node with the given options.
func newRelayNodeOpts(t testing.TB, name string, o relayOptions) *relayNode {
	t.Helper()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{"127.0.0.1"},
		Logger:    log.New(io.Discard, "", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	rt := newRelayTransport(nt, name, slog.New(slog.DiscardHandler), o)
	t.Cleanup(func() { rt.Shutdown() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(nt.GetAutoBindPort()))
	rt.setOrigin(addr)
	return &relayNode{name: name, t: rt, addr: addr}
}

// relayTriple is a, b and c where a sends to c through b, all holding
// testGossipKey and reading authenticated envelopes. Each knows the
// others' addresses; a's table routes c via b.
func relayTriple(t *testing.T) (a, b, c *relayNode) {
	a, b, c = newRelayNode(t, "a"), newRelayNode(t, "b"), newRelayNode(t, "c")
	linkTriple(a, b, c, true)
	return a, b, c
}

// linkTriple sets the tables of a triple: a reaches c through b and back;
// auth says whether every node reads authenticated envelopes.
func linkTriple(a, b, c *relayNode, auth bool) {
	addrs := map[string]string{"a": a.addr, "b": b.addr, "c": c.addr}
	reads := map[string]bool{"a": auth, "b": auth, "c": auth}
	a.t.setTable(&relayTable{via: map[string]relayHop{"c": {"b", b.addr, auth}}, addrs: addrs, auth: reads})
	b.t.setTable(&relayTable{addrs: addrs, auth: reads})
	c.t.setTable(&relayTable{via: map[string]relayHop{"a": {"b", b.addr, auth}}, addrs: addrs, auth: reads})
}

func recvPacket(t *testing.T, n *relayNode, within time.Duration) *memberlist.Packet {
	t.Helper()
	select {
	case p := <-n.t.PacketCh():
		return p
	case <-time.After(within):
		return nil
	}
}

func TestRelayPacketThroughRelay(t *testing.T) {
	a, b, c := relayTriple(t)
	payload := []byte("memberlist packet")
	if _, err := a.t.WriteToAddress(payload, memberlist.Address{Addr: c.addr, Name: "c"}); err != nil {
		t.Fatal(err)
	}
	p := recvPacket(t, c, 5*time.Second)
	if p == nil {
		t.Fatal("c received nothing")
	}
	if !bytes.Equal(p.Buf, payload) {
		t.Fatalf("c received %q, want %q", p.Buf, payload)
	}
	if p.From.String() != a.addr {
		t.Fatalf("c sees the packet from %v, want a's address %s (memberlist answers there)", p.From, a.addr)
	}
	if p := recvPacket(t, b, 200*time.Millisecond); p != nil {
		t.Fatalf("the relay handed memberlist a packet for c: %q", p.Buf)
	}
	if s := a.t.stats(); s.Sent != 1 {
		t.Fatalf("a's stats %+v, want 1 sent through a relay", s)
	}
	waitStat(t, "b's forwarded envelopes", func() uint64 { return b.t.stats().Forwarded }, 1)
	if s := b.t.stats(); s.Dropped != 0 {
		t.Fatalf("b's stats %+v, want nothing dropped", s)
	}
	// The answer goes back the same way (c routes a via b).
	if _, err := c.t.WriteToAddress([]byte("ack"), memberlist.Address{Addr: a.addr, Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, a, 5*time.Second); p == nil || string(p.Buf) != "ack" || p.From.String() != c.addr {
		t.Fatalf("a received %+v, want the ack from %s", p, c.addr)
	}
	// Without a route, a packet goes directly and unwrapped.
	if _, err := a.t.WriteToAddress([]byte("direct"), memberlist.Address{Addr: b.addr, Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, b, 5*time.Second); p == nil || string(p.Buf) != "direct" {
		t.Fatalf("b received %+v, want the direct packet", p)
	}
}

func TestRelayDropsWhatItMustNotForward(t *testing.T) {
	_, b, c := relayTriple(t)
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"ttl spent", b.t.envelope(kindPacket, envelopeHeader{ttl: 1, target: "c", origin: "127.0.0.1:1"}, true, []byte("x"))},
		{"unknown target", b.t.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "nobody", origin: "127.0.0.1:1"}, true, []byte("x"))},
		{"truncated tag", b.t.envelope(kindPacket, envelopeHeader{ttl: relayTTL, target: "c", origin: "127.0.0.1:1"}, true, nil)[:8]},
		{"truncated", []byte{relayMagic, relayVersion, relayTTL, 9, 'c'}},
		{"other version", append([]byte{relayMagic, 9, relayTTL, 1, 'c', 0}, 'x')},
		{"empty target", append([]byte{relayMagic, relayVersion, relayTTL, 0, 0}, 'x')},
	}
	for i, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := b.t.inner.WriteTo(tt.pkt, b.addr); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for b.t.stats().Dropped < uint64(i+1) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := b.t.stats().Dropped; got != uint64(i+1) {
				t.Fatalf("dropped %d envelopes, want %d", got, i+1)
			}
			if p := recvPacket(t, c, 100*time.Millisecond); p != nil {
				t.Fatalf("c received %q", p.Buf)
			}
			if p := recvPacket(t, b, 100*time.Millisecond); p != nil {
				t.Fatalf("b handed memberlist %q", p.Buf)
			}
		})
	}
	if s := b.t.stats(); s.Forwarded != 0 {
		t.Fatalf("b forwarded %d envelopes, want none", s.Forwarded)
	}
}

func TestRelayStreamThroughRelay(t *testing.T) {
	a, b, c := relayTriple(t)
	conn, err := a.t.DialAddressTimeout(memberlist.Address{Addr: c.addr, Name: "c"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("push")); err != nil {
		t.Fatal(err)
	}
	var in net.Conn
	select {
	case in = <-c.t.StreamCh():
	case <-time.After(5 * time.Second):
		t.Fatal("c received no stream")
	}
	defer in.Close()
	_ = in.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "push" {
		t.Fatalf("c read %q, %v; want the stream's own bytes", buf, err)
	}
	if _, err := in.Write([]byte("pull")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "pull" {
		t.Fatalf("a read %q, %v; want c's answer", buf, err)
	}
	select {
	case s := <-b.t.StreamCh():
		t.Fatalf("the relay handed memberlist a stream for c from %v", s.RemoteAddr())
	case <-time.After(100 * time.Millisecond):
	}
	if s := b.t.stats(); s.Forwarded != 1 {
		t.Fatalf("b's stats %+v, want 1 forwarded stream", s)
	}
	// memberlist's own streams pass untouched.
	direct, err := a.t.DialAddressTimeout(memberlist.Address{Addr: b.addr, Name: "b"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if _, err := direct.Write([]byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-b.t.StreamCh():
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, 3)
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, []byte{1, 2, 3}) {
			t.Fatalf("b read %v, %v from a direct stream", got, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b received no direct stream")
	}
}

// TestRelayShutdownWithUnreadPackets: memberlist stops reading before it
// shuts the transport down; packets and streams still arriving must not
// keep Shutdown (and so memberlist's) from returning.
func TestRelayShutdownWithUnreadPackets(t *testing.T) {
	a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
	for range 50 {
		if _, err := a.t.inner.WriteTo([]byte("unread"), b.addr); err != nil {
			t.Fatal(err)
		}
	}
	c, err := a.t.inner.DialTimeout(b.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{1})
	time.Sleep(200 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- b.t.Shutdown() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return with packets and a stream nobody read")
	}
}

// TestSetRelaysOnlyThroughReaders: gossip goes to a relay only if the
// relay is a live member that reads the envelope (its metadata says so);
// a node of the previous release, which would take an envelope for a
// broken memberlist packet, is never one.
func TestSetRelaysOnlyThroughReaders(t *testing.T) {
	a := startWith(t, testConfig(t, "a", nil))
	b := startWith(t, testConfig(t, "b", nil, a.LocalAddr().String()))
	waitWithin(t, 10*time.Second, "a sees b alive", func() bool { return a.IsMember("b") })
	a.SetRelays(map[string]string{"c": "b", "d": "nobody", "b": "b"})
	tab := a.relay.table.Load()
	if h, ok := tab.via["c"]; !ok || h.name != "b" || h.addr != b.LocalAddr().String() {
		t.Fatalf("c's relay is %+v (%v), want b at %s", h, ok, b.LocalAddr())
	}
	if _, ok := tab.via["d"]; ok {
		t.Fatal("d goes through a relay that is no member")
	}
	if _, ok := tab.via["b"]; ok {
		t.Fatal("b is its own relay")
	}
	if tab.addrs["b"] != b.LocalAddr().String() || len(tab.addrs) != 1 {
		t.Fatalf("forwarding addresses %v, want only b's", tab.addrs)
	}
	// testConfig has no gossip key: nobody reads authenticated envelopes,
	// and envelopes without a tag are all there is.
	if h := tab.via["c"]; h.auth || tab.auth["b"] {
		t.Fatalf("b reads authenticated envelopes without a gossip key: %+v %v", h, tab.auth)
	}
	a.mu.Lock()
	a.members["b"].Meta.GossipRelay = 0 // as a previous release announces
	a.mu.Unlock()
	a.SetRelays(map[string]string{"c": "b"})
	if h, ok := a.relay.table.Load().via["c"]; ok {
		t.Fatalf("c goes through %+v, which does not read envelopes", h)
	}
}

// TestNeighbourExchange: a state exchange is wanted only while a live
// member has neither a direct path nor a relay, and goes to a member this
// node reaches directly.
func TestNeighbourExchange(t *testing.T) {
	addrs := map[string]string{"b": "10.0.0.2:6783", "c": "10.0.0.3:6783", "d": "10.0.0.4:6783"}
	tests := []struct {
		name   string
		via    map[string]relayHop
		failed []string
		want   []string // acceptable answers; none: no exchange
	}{
		{name: "every member reached directly", want: nil},
		{name: "a failed member with a relay", via: map[string]relayHop{"c": {name: "b", addr: addrs["b"]}}, failed: []string{"c"}, want: nil},
		{name: "a failed member no longer live", failed: []string{"x"}, want: nil},
		{name: "a failed member with no route", failed: []string{"c"}, want: []string{addrs["b"], addrs["d"]}},
		{name: "not through a relayed or failed member", via: map[string]relayHop{"d": {name: "b", addr: addrs["b"]}}, failed: []string{"c"}, want: []string{addrs["b"]}},
		{name: "nobody reached directly", failed: []string{"b", "c", "d"}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newRelayNode(t, "a")
			via := tc.via
			if via == nil {
				via = map[string]relayHop{}
			}
			n.t.setTable(&relayTable{via: via, addrs: addrs})
			for _, f := range tc.failed {
				n.t.noteDirect(f, io.EOF)
			}
			for range 20 {
				got, ok := n.t.neighbourExchange(time.Now())
				if ok != (len(tc.want) > 0) {
					t.Fatalf("neighbourExchange = %q, %v; want one of %v", got, ok, tc.want)
				}
				if ok && !slices.Contains(tc.want, got) {
					t.Fatalf("neighbourExchange = %q; want one of %v", got, tc.want)
				}
			}
			// A failure older than directFailureMemory no longer counts.
			if _, ok := n.t.neighbourExchange(time.Now().Add(directFailureMemory)); ok {
				t.Fatal("an expired direct failure still asks for an exchange")
			}
		})
	}
}

// TestDirectFailuresLeaveOutHomedMembers: a failed direct dial counts as a
// down path, except to a member behind NAT that announces a home, whose
// gossip goes through the home and whose gossip port nobody reaches
// directly (counted, it relayed a NAT node's data plane for a minute
// after its join although its probes answered).
func TestDirectFailuresLeaveOutHomedMembers(t *testing.T) {
	a := startWith(t, testConfig(t, "a", nil))
	a.mu.Lock()
	a.members["natted"] = &Member{Name: "natted", State: api.MemberAlive, Meta: Meta{Home: "b"}}
	a.members["plain"] = &Member{Name: "plain", State: api.MemberAlive}
	a.mu.Unlock()
	for _, name := range []string{"natted", "plain", "gone"} {
		a.relay.noteDirect(name, io.EOF)
	}
	if got, want := a.DirectFailures(), []string{"gone", "plain"}; !slices.Equal(got, want) {
		t.Fatalf("DirectFailures() = %v, want %v", got, want)
	}
	// Its home withdrawn (it detached, reachable again), the mark counts.
	a.mu.Lock()
	a.members["natted"].Meta.Home = ""
	a.mu.Unlock()
	if got, want := a.DirectFailures(), []string{"gone", "natted", "plain"}; !slices.Equal(got, want) {
		t.Fatalf("DirectFailures() after the home is gone = %v, want %v", got, want)
	}
}
