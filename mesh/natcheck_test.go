package mesh

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// listenCounting listens on loopback and counts the connections it gets,
// closing each: an address where something other than a mesh node answers.
func listenCounting(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), &n
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestReachCheck(t *testing.T) {
	elsewhere, _ := listenCounting(t)
	cases := []struct {
		name string
		// advertise returns the address the checking node advertises
		// ("" for its own).
		advertise func(t *testing.T) string
		want      api.Reachability
	}{
		{"own address", func(*testing.T) string { return "" }, api.ReachDirect},
		{"nothing listens there", deadAddr, api.ReachBehindNAT},
		{"something else answers there", func(*testing.T) string { return elsewhere }, api.ReachBehindNAT},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
			self := a.addr
			if adv := tc.advertise(t); adv != "" {
				self = adv
			}
			v, err := a.t.checkReach(b.addr, self)
			if err != nil {
				t.Fatal(err)
			}
			if v.State != tc.want || v.Peer != b.addr {
				t.Fatalf("verdict %+v, want %q from %s", v, tc.want, b.addr)
			}
			// The peer reports where the check came from: here a's
			// loopback address.
			if !strings.HasPrefix(v.Observed, "127.0.0.1:") {
				t.Fatalf("observed %q, want a loopback address", v.Observed)
			}
			if s := b.t.stats(); s.Refused != 0 || s.Dropped != 0 {
				t.Fatalf("b's stats %+v", s)
			}
		})
	}
}

// TestReachCheckRefusesWithoutTheKey: a peer dials back only for a holder
// of the mesh key, so nobody else can make members connect to addresses
// of their choice.
func TestReachCheckRefusesWithoutTheKey(t *testing.T) {
	a := newRelayNodeKeys(t, "a", bytes.Repeat([]byte{9}, 32))
	b := newRelayNode(t, "b")
	target, dials := listenCounting(t)
	_, err := a.t.checkReach(b.addr, target)
	if !errors.Is(err, errNoVerdict) {
		t.Fatalf("check with another key: %v, want no verdict", err)
	}
	waitStat(t, "b's refused", func() uint64 { return b.t.stats().Refused }, 1)
	if n := dials.Load(); n != 0 {
		t.Fatalf("b connected %d times to the address named by a check without the key", n)
	}
}

// TestReachCheckHostileInput: truncated and malformed checks are dropped
// without a dial and without taking the peer down, and a back message
// with a nonce nobody waits for is ignored.
func TestReachCheckHostileInput(t *testing.T) {
	b := newRelayNode(t, "b")
	target, dials := listenCounting(t)
	var nonce [reachNonceLen]byte
	withTag := func(addr string) []byte {
		m := append([]byte{relayMagic, reachVersion}, nonce[:]...)
		m = append(m, byte(len(addr)))
		m = append(m, addr...)
		return append(m, envelopeTag(relayMACKey(testGossipKey), kindReach, addr, "", nonce[:])...)
	}
	cases := []struct {
		name string
		msg  []byte
	}{
		{"only the version", []byte{relayMagic, reachVersion}},
		{"cut in the nonce", []byte{relayMagic, reachVersion, 1, 2, 3}},
		{"address longer than sent", append(append([]byte{relayMagic, reachVersion}, nonce[:]...), 200, 'x')},
		{"no tag", withTag(target)[:len(withTag(target))-relayTagLen]},
		{"not an address", withTag("not-an-address")},
		{"back message cut", []byte{relayMagic, reachBackVersion, 7}},
		{"back message for no check", append([]byte{relayMagic, reachBackVersion}, nonce[:]...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(tc.msg); err != nil {
				t.Fatal(err)
			}
			if cw, ok := c.(*net.TCPConn); ok {
				_ = cw.CloseWrite()
			}
			// b closes the stream without an answer.
			_ = c.SetReadDeadline(time.Now().Add(relayHeaderTimeout + 5*time.Second))
			if n, err := c.Read(make([]byte, 64)); err == nil {
				t.Fatalf("b answered %d bytes", n)
			}
		})
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("b dialled %d times on malformed checks", n)
	}
	// b still serves a proper check.
	a := newRelayNode(t, "a")
	if v, err := a.t.checkReach(b.addr, a.addr); err != nil || v.State != api.ReachDirect {
		t.Fatalf("check after the hostile ones: %+v, %v", v, err)
	}
}

// fixed is a list of targets that never changes.
func fixed(targets []string) func() []string { return func() []string { return targets } }

// TestDetectNAT: the check asks the launch peers in turn until one
// answers; a peer of the previous release (it closes the stream) or a
// dead one gives no verdict, and only a verdict of NAT attaches a home.
func TestDetectNAT(t *testing.T) {
	old, _ := listenCounting(t) // closes every stream, as the previous release does
	dead := deadAddr(t)
	t.Run("reachable", func(t *testing.T) {
		a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
		var behind atomic.Int64
		a.t.wg.Add(1)
		a.t.detectNAT(fixed([]string{a.addr, dead, old, b.addr}), false, func() { behind.Add(1) })
		if v := a.t.reach.get(); v.State != api.ReachDirect || v.Peer != b.addr {
			t.Fatalf("verdict %+v, want reachable, from b", v)
		}
		if behind.Load() != 0 {
			t.Fatal("a reachable node attached to a home")
		}
	})
	t.Run("behind NAT", func(t *testing.T) {
		a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
		a.t.setOrigin(dead)
		var behind atomic.Int64
		a.t.wg.Add(1)
		a.t.detectNAT(fixed([]string{old, b.addr}), false, func() { behind.Add(1) })
		if v := a.t.reach.get(); v.State != api.ReachBehindNAT || v.Peer != b.addr {
			t.Fatalf("verdict %+v, want behind NAT, from b", v)
		}
		if behind.Load() != 1 {
			t.Fatalf("attached %d times, want once", behind.Load())
		}
	})
	t.Run("configured", func(t *testing.T) {
		// --behind-nat: the check only learns the public address; the
		// state stays configured whatever the peer finds.
		a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
		var told atomic.Int64
		a.t.wg.Add(1)
		a.t.detectNAT(fixed([]string{b.addr}), true, func() { told.Add(1) })
		v := a.t.reach.get()
		if v.State != api.ReachConfigured || v.Peer != b.addr || !strings.HasPrefix(v.Observed, "127.0.0.1:") {
			t.Fatalf("verdict %+v, want configured, observed by b", v)
		}
		if told.Load() != 1 {
			t.Fatalf("told %d times of the observed address, want once", told.Load())
		}
	})
	t.Run("peers added later", func(t *testing.T) {
		// With --kube the peers come from the Nodes, after launch: the
		// node is unchecked until there is one to ask.
		a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
		var list atomic.Pointer[[]string]
		list.Store(&[]string{})
		done := make(chan struct{})
		a.t.wg.Add(1)
		go func() {
			defer close(done)
			a.t.detectNAT(func() []string { return *list.Load() }, false, func() { t.Error("a reachable node attached") })
		}()
		time.Sleep(reachRetry + 500*time.Millisecond)
		if v := a.t.reach.get(); v.State != api.ReachUnchecked {
			t.Fatalf("with no peer to ask: %+v, want unchecked", v)
		}
		list.Store(&[]string{b.addr})
		select {
		case <-done:
		case <-time.After(reachRetry + 10*time.Second):
			t.Fatal("the check did not ask the peer added later")
		}
		if v := a.t.reach.get(); v.State != api.ReachDirect || v.Peer != b.addr {
			t.Fatalf("verdict %+v, want reachable, from b", v)
		}
	})
	t.Run("only previous releases", func(t *testing.T) {
		// Each is asked once: no retry would change their answer.
		a := newRelayNode(t, "a")
		old2, asked := listenCounting(t)
		a.t.wg.Add(1)
		a.t.detectNAT(fixed([]string{old, old2, old2}), false, func() { t.Error("attached without a verdict") })
		if v := a.t.reach.get(); v.State != api.ReachUnchecked || !strings.Contains(v.Err, "without an answer") {
			t.Fatalf("verdict %+v, want unchecked, saying why", v)
		}
		if n := asked.Load(); n != 1 {
			t.Fatalf("asked a peer of the previous release %d times, want once", n)
		}
	})
	t.Run("no verdict until shutdown", func(t *testing.T) {
		a := newRelayNode(t, "a")
		done := make(chan struct{})
		a.t.wg.Add(1)
		go func() {
			defer close(done)
			a.t.detectNAT(fixed([]string{old, dead}), false, func() { t.Error("attached without a verdict") })
		}()
		waitWithin(t, 10*time.Second, "the check to start", func() bool { return a.t.reach.get().State == api.ReachChecking })
		a.t.Shutdown()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the check did not end with the transport")
		}
	})
}

// TestRecheckReach: the check runs again after its first verdict. A node
// found reachable that now sits behind NAT (here: its advertised address
// stops answering) attaches to a home, once; a node behind NAT whose
// public address changed announces the new one, once per change; a node
// found behind NAT that is reachable again detaches, once; a node
// configured behind NAT stays so.
func TestRecheckReach(t *testing.T) {
	const every = 50 * time.Millisecond
	dead := deadAddr(t)
	// run starts recheckReach and returns a stop that waits for it.
	run := func(t *testing.T, n *relayNode, targets []string, attach, detach, announce func()) {
		done := make(chan struct{})
		n.t.wg.Add(1)
		go func() {
			defer close(done)
			n.t.recheckReach(fixed(targets), attach, detach, announce, every)
		}()
		t.Cleanup(func() {
			n.t.Shutdown()
			<-done
		})
	}
	t.Run("reachable, then behind NAT", func(t *testing.T) {
		a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
		a.t.reach.set(Reachability{State: api.ReachDirect, Peer: b.addr})
		var attached, announced atomic.Int64
		run(t, a, []string{b.addr}, func() { attached.Add(1) }, func() { t.Error("a reachable node detached") }, func() { announced.Add(1) })
		time.Sleep(5 * every)
		if n := attached.Load(); n != 0 {
			t.Fatalf("a reachable node attached %d times", n)
		}
		if v := a.t.reach.get(); v.State != api.ReachDirect {
			t.Fatalf("after re-checks: %+v, want reachable", v)
		}
		a.t.setOrigin(dead)
		waitWithin(t, 20*time.Second, "the re-check to find a behind NAT", func() bool { return attached.Load() > 0 })
		if v := a.t.reach.get(); v.State != api.ReachBehindNAT || v.Peer != b.addr {
			t.Fatalf("after the move: %+v, want behind NAT, from b", v)
		}
		time.Sleep(5 * every)
		if n := attached.Load(); n != 1 {
			t.Fatalf("attached %d times, want once", n)
		}
		if n := announced.Load(); n != 0 {
			t.Fatalf("announced %d times with an unchanged public address", n)
		}
	})
	t.Run("public address changed", func(t *testing.T) {
		for _, configured := range []bool{true, false} {
			a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
			state := api.ReachBehindNAT
			if configured {
				state = api.ReachConfigured
			} else {
				a.t.setOrigin(dead)
			}
			a.t.reach.set(Reachability{State: state, Peer: b.addr, Observed: "198.51.100.7:40000"})
			var announced atomic.Int64
			run(t, a, []string{b.addr}, func() { t.Error("attached again") }, func() { t.Error("detached behind NAT") }, func() { announced.Add(1) })
			waitWithin(t, 20*time.Second, "the new public address", func() bool { return announced.Load() > 0 })
			time.Sleep(5 * every)
			if n := announced.Load(); n != 1 {
				t.Fatalf("configured=%v: announced %d times for one change, want once", configured, n)
			}
			if v := a.t.reach.get(); v.State != state || publicIP(v.Observed) != "127.0.0.1" {
				t.Fatalf("configured=%v: %+v, want %s seen as 127.0.0.1", configured, v, state)
			}
		}
	})
	t.Run("behind NAT, then reachable", func(t *testing.T) {
		for _, configured := range []bool{false, true} {
			a, b := newRelayNode(t, "a"), newRelayNode(t, "b")
			state := api.ReachBehindNAT
			if configured {
				state = api.ReachConfigured
			}
			a.t.reach.set(Reachability{State: state, Peer: b.addr, Observed: "127.0.0.1:1"})
			var detached atomic.Int64
			run(t, a, []string{b.addr}, func() { t.Error("attached again") }, func() { detached.Add(1) }, func() { t.Error("announced an unchanged public address") })
			waitWithin(t, 20*time.Second, "a re-check", func() bool { return a.t.reach.get().Observed != "127.0.0.1:1" })
			time.Sleep(5 * every)
			v := a.t.reach.get()
			switch {
			case configured && (v.State != api.ReachConfigured || detached.Load() != 0):
				t.Fatalf("configured: %+v, detached %d times: want it to stay configured and attached", v, detached.Load())
			case !configured && (v.State != api.ReachDirect || detached.Load() != 1):
				t.Fatalf("%+v, detached %d times: want reachable, detached once", v, detached.Load())
			}
		}
	})
	t.Run("off", func(t *testing.T) {
		a := newRelayNode(t, "a")
		a.t.wg.Add(1)
		done := make(chan struct{})
		go func() { defer close(done); a.t.recheckReach(fixed([]string{dead}), nil, nil, nil, 0) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("recheckReach with interval 0 did not return")
		}
	})
}
