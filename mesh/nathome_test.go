package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// attachNode starts n's attach loop towards the given home addresses.
func attachNode(n *relayNode, homes ...string) {
	n.t.startAttach(func() []string { return homes })
}

func recvStream(t *testing.T, n *relayNode) net.Conn {
	t.Helper()
	select {
	case s := <-n.t.StreamCh():
		t.Cleanup(func() { s.Close() })
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("%s received no stream", n.name)
		return nil
	}
}

// roundTrip writes "ping" on a, expects it on b, answers "pong" and
// expects that on a.
func roundTrip(t *testing.T, a, b net.Conn) {
	t.Helper()
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v; want ping", buf, err)
	}
	if _, err := b.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(a, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read %q, %v; want pong", buf, err)
	}
}

// TestAttachCarriesGossip: a node behind NAT (n) attaches to a home (h);
// packets and streams for n, from the home itself and from another
// member (c) that routes n through the home, reach n without any
// connection to n's own port.
func TestAttachCarriesGossip(t *testing.T) {
	h, n, c := newRelayNode(t, "h"), newRelayNode(t, "n"), newRelayNode(t, "c")
	addrs := map[string]string{"h": h.addr, "n": n.addr, "c": c.addr}
	reads := map[string]bool{"h": true, "n": true, "c": true}
	h.t.setTable(&relayTable{addrs: addrs, auth: reads})
	c.t.setTable(&relayTable{via: map[string]relayHop{"n": {"h", h.addr, true}}, addrs: addrs, auth: reads})
	// n's own port is closed to everyone: only what comes through the
	// attachment counts.
	nAddr := n.addr
	n.addr = ""
	attachNode(n, h.addr)
	waitWithin(t, 10*time.Second, "n attached to h", func() bool {
		return n.t.homeName() == "h" && slices.Equal(h.t.attachedNames(), []string{"n"})
	})

	if _, err := c.t.WriteToAddress([]byte("from c"), memberlist.Address{Addr: nAddr, Name: "n"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, n, 5*time.Second); p == nil || string(p.Buf) != "from c" || p.From.String() != c.addr {
		t.Fatalf("n received %+v, want c's packet from %s", p, c.addr)
	}
	if _, err := h.t.WriteToAddress([]byte("from h"), memberlist.Address{Addr: nAddr, Name: "n"}); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, n, 5*time.Second); p == nil || string(p.Buf) != "from h" || p.From.String() != h.addr {
		t.Fatalf("n received %+v, want h's packet from %s", p, h.addr)
	}

	// Streams: n dials each back through the home.
	out, err := c.t.DialAddressTimeout(memberlist.Address{Addr: nAddr, Name: "n"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	roundTrip(t, out, recvStream(t, n))
	out2, err := h.t.DialAddressTimeout(memberlist.Address{Addr: nAddr, Name: "n"}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer out2.Close()
	roundTrip(t, out2, recvStream(t, n))
	waitStat(t, "h's forwarded envelopes (c's packet and stream)", func() uint64 { return h.t.stats().Forwarded }, 2)

	// n leaves: the home forgets it, and a stream for it fails at once.
	n.t.Shutdown()
	waitWithin(t, 10*time.Second, "h forgets n", func() bool { return len(h.t.attachedNames()) == 0 })
	if n.t.homeName() != "" {
		t.Fatalf("n still names home %q after its shutdown", n.t.homeName())
	}
}

// TestAttachNeedsTheKey: a home refuses a node that does not hold the
// mesh key (it could otherwise take over another node's inbound gossip),
// and a node refuses a home that does not hold it.
func TestAttachNeedsTheKey(t *testing.T) {
	other := bytes.Repeat([]byte{9}, 32)
	h := newRelayNode(t, "h")
	impostor := newRelayNodeKeys(t, "n", other)
	attachNode(impostor, h.addr)
	waitWithin(t, 10*time.Second, "h refuses the impostor", func() bool { return h.t.stats().Refused > 0 })
	if got := h.t.attachedNames(); len(got) != 0 || impostor.t.homeName() != "" {
		t.Fatalf("attached %v, impostor's home %q", got, impostor.t.homeName())
	}

	// A fake home takes any tag and answers a hello whose tag it cannot
	// make.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 3+len("n2")+attachNonceLen)
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				_, _ = c.Write(make([]byte, attachNonceLen))
				if _, err := io.ReadFull(c, make([]byte, relayTagLen)); err != nil {
					return
				}
				hello := append([]byte("h2"), make([]byte, relayTagLen)...)
				_, _ = c.Write(append([]byte{frameHello, 0, byte(len(hello))}, hello...))
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	n := newRelayNode(t, "n2")
	attachNode(n, ln.Addr().String())
	waitWithin(t, 10*time.Second, "n refuses the fake home", func() bool { return n.t.stats().Refused > 0 })
	if n.t.homeName() != "" {
		t.Fatalf("n attached to %q, which does not hold the key", n.t.homeName())
	}
}

// TestSetRelaysThroughHome: gossip for a member that announces a home
// goes through the home, whatever the data plane's choice; the home
// itself gets no route (it reaches the member through its attachment).
func TestSetRelaysThroughHome(t *testing.T) {
	a := startWith(t, testConfig(t, "a", testGossipKey))
	b := startWith(t, testConfig(t, "b", testGossipKey, a.LocalAddr().String()))
	c := startWith(t, testConfig(t, "c", testGossipKey, a.LocalAddr().String()))
	waitWithin(t, 10*time.Second, "a sees b and c alive", func() bool { return a.IsMember("b") && a.IsMember("c") })
	a.mu.Lock()
	a.members["b"].Meta.Home = "c"
	a.mu.Unlock()
	a.SetRelays(map[string]string{"b": "nobody"})
	if h, ok := a.relay.table.Load().via["b"]; !ok || h.name != "c" || h.addr != c.LocalAddr().String() {
		t.Fatalf("b's route %+v (%v), want through its home c", h, ok)
	}
	a.mu.Lock()
	a.members["b"].Meta.Home = "a"
	a.mu.Unlock()
	a.SetRelays(nil)
	if h, ok := a.relay.table.Load().via["b"]; ok {
		t.Fatalf("b routed through %+v, though this node is its home", h)
	}
	_ = b
}

// TestAttachBoundToIdentity: a name bound to an identity attaches only
// with that identity's signature; another holder of the mesh key cannot
// take over its inbound gossip, and the node itself still attaches (and
// takes its place back).
func TestAttachBoundToIdentity(t *testing.T) {
	real, impostorKey := newSignKey(t), newSignKey(t)
	h := newRelayNodeOpts(t, "h", relayOptions{keyring: newTestKeyring(t, testGossipKey), boundKey: func(name string) string {
		if name == "n" {
			return base64.StdEncoding.EncodeToString(real.Public().(ed25519.PublicKey))
		}
		return ""
	}})
	impostor := newRelayNodeOpts(t, "n", relayOptions{keyring: newTestKeyring(t, testGossipKey), signKey: impostorKey})
	attachNode(impostor, h.addr)
	waitWithin(t, 10*time.Second, "h refuses the impostor", func() bool { return h.t.stats().Refused > 0 })
	if got := h.t.attachedNames(); len(got) != 0 {
		t.Fatalf("attached %v: the impostor took the name", got)
	}
	impostor.t.Shutdown()

	n := newRelayNodeOpts(t, "n", relayOptions{keyring: newTestKeyring(t, testGossipKey), signKey: real})
	attachNode(n, h.addr)
	waitWithin(t, 10*time.Second, "n attached to h", func() bool {
		return n.t.homeName() == "h" && slices.Equal(h.t.attachedNames(), []string{"n"})
	})
	// An unbound name attaches on the mesh key alone (trust on first
	// use, as the bindings themselves).
	o := newRelayNode(t, "o")
	attachNode(o, h.addr)
	waitWithin(t, 10*time.Second, "o attached to h", func() bool { return o.t.homeName() == "h" })
}

// TestDetachAndAttachAgain: stopAttach ends the attachment on both ends
// and the node's home is "" (onChange told once per change); startAttach
// attaches again, and a second startAttach while attached starts no
// second loop.
func TestDetachAndAttachAgain(t *testing.T) {
	h, n := newRelayNode(t, "h"), newRelayNode(t, "n")
	var changes atomic.Int64
	n.t.att.mu.Lock()
	n.t.att.onChange = func() { changes.Add(1) }
	n.t.att.mu.Unlock()
	attached := func() bool { return n.t.homeName() == "h" && slices.Equal(h.t.attachedNames(), []string{"n"}) }
	attachNode(n, h.addr)
	attachNode(n, h.addr) // already running: nothing
	waitWithin(t, 10*time.Second, "n attached to h", attached)
	n.t.stopAttach()
	n.t.stopAttach() // nothing left to stop
	waitWithin(t, 10*time.Second, "n detached on both ends", func() bool {
		return n.t.homeName() == "" && len(h.t.attachedNames()) == 0
	})
	time.Sleep(1500 * time.Millisecond) // longer than the loop's first backoff
	if got := n.t.homeName(); got != "" {
		t.Fatalf("n attached again to %q after stopAttach", got)
	}
	if c := changes.Load(); c != 2 {
		t.Fatalf("home changed %d times (attach, detach), want 2", c)
	}
	attachNode(n, h.addr)
	waitWithin(t, 10*time.Second, "n attached to h again", attached)
	if c := changes.Load(); c != 3 {
		t.Fatalf("home changed %d times, want 3", c)
	}
}
