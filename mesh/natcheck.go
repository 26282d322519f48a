package mesh

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/meshnet/mesh/api"
)

// The reachability check (docs/routing.md, "Nodes behind NAT").
//
// A node that was not told whether it is behind NAT (Config.DetectNAT)
// asks a peer named at launch to connect back to the gossip address it
// advertises. Behind a masquerading router that address is private: the
// peer's dial fails, and the node attaches to a home as if run with
// --behind-nat. A node the peer reaches stays as it is. The check runs
// before the others have had time to declare the node dead, and costs one
// TCP connection each way.
//
// On the peer's gossip port, after relayMagic:
//
//	check: 0xF5 | 5 | nonce (16 bytes) | len(addr) addr | tag (16 bytes,
//	       with a gossip key: envelopeTag under relayMACKey of kind 'r',
//	       target addr, no origin, payload the nonce); the peer dials
//	       addr and sends the back message, then answers on the check's
//	       stream: result (1 byte: 1 it connected, 0 it could not) |
//	       len(observed) observed (the address the check came from)
//	back:  0xF5 | 6 | nonce (16 bytes), on the node's own gossip port
//
// The node counts itself reachable only when the back message with its
// nonce arrived: something else answering at its address (the NAT router
// itself) is no proof. A peer of the previous release does not know the
// check and closes the stream: the node then asks the next peer, and
// without an answer from any stays as it is (Reachability "unchecked").
// The tag keeps anyone without the mesh key from making a member dial
// addresses of their choice.

const (
	reachVersion     byte = 5
	reachBackVersion byte = 6
	kindReach        byte = 'r'
	reachNonceLen         = 16
	// reachDialTimeout bounds the peer's dial back; behind NAT it usually
	// ends at once (no route to a private address) or after it.
	reachDialTimeout = 5 * time.Second
	// reachWait bounds the whole check on the node's side.
	reachWait = reachDialTimeout + 5*time.Second
	// reachBackGrace is how long the node waits for the back message
	// after the peer said it connected. The two travel separately, and
	// the back message needs a goroutine of this node to read it: on a
	// saturated CPU that can take seconds, and a verdict given too early
	// would be "behind NAT" for a reachable node. Only a node whose
	// address something else answers waits it out.
	reachBackGrace = 5 * time.Second
	// reachRetry is the pause between rounds over the launch peers while
	// none answers, and reachGiveUp when the node stops asking.
	reachRetry  = 2 * time.Second
	reachGiveUp = 2 * time.Minute
)

// Reachability is what this node knows of whether others can connect to
// its gossip address.
type Reachability struct {
	State api.Reachability
	// Peer is the gossip address of the peer that checked ("" if none).
	Peer string
	// Observed is the address that peer saw the check come from: behind
	// NAT, the router's.
	Observed string
	// Err says why the last check gave no verdict ("" when it did).
	Err string
}

// reacher is the node side of the reachability check.
type reacher struct {
	mu      sync.Mutex
	waiting map[[reachNonceLen]byte]chan struct{} // checks under way
	state   Reachability
}

func (r *reacher) get() Reachability {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *reacher) set(s Reachability) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.state = s
}

// errNoVerdict wraps the reasons a check gave no verdict; errNoAnswer
// (which wraps it) is a peer that took the check and closed the stream:
// a previous release, or a peer that refused the tag. Asking it again
// would not help.
var (
	errNoVerdict = errors.New("no verdict")
	errNoAnswer  = fmt.Errorf("%w: the peer closed the check without an answer (a previous release, or it refused the check's tag)", errNoVerdict)
)

// checkReach asks the peer at addr to connect back to this node's
// advertised gossip address self. It returns api.ReachDirect or
// api.ReachBehindNAT, or an error (wrapping errNoVerdict) when the peer gave no
// verdict.
func (t *relayTransport) checkReach(addr, self string) (Reachability, error) {
	var nonce [reachNonceLen]byte
	_, _ = rand.Read(nonce[:])
	back := make(chan struct{})
	t.reach.mu.Lock()
	if t.reach.waiting == nil {
		t.reach.waiting = map[[reachNonceLen]byte]chan struct{}{}
	}
	t.reach.waiting[nonce] = back
	t.reach.mu.Unlock()
	defer func() {
		t.reach.mu.Lock()
		delete(t.reach.waiting, nonce)
		t.reach.mu.Unlock()
	}()

	c, err := t.dial(addr, 5*time.Second)
	if err != nil {
		return Reachability{}, fmt.Errorf("%w: failed to dial %s: %v", errNoVerdict, addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(reachWait))
	msg := append([]byte{relayMagic, reachVersion}, nonce[:]...)
	msg = append(msg, byte(len(self)))
	msg = append(msg, self...)
	if keys := envelopeKeys(t.keyring); len(keys) > 0 {
		msg = append(msg, envelopeTag(keys[0], kindReach, self, "", nonce[:])...)
	}
	if _, err := c.Write(msg); err != nil {
		return Reachability{}, fmt.Errorf("%w: %s: %v", errNoAnswer, addr, err)
	}
	br := bufio.NewReader(c)
	var res [2]byte
	if _, err := io.ReadFull(br, res[:]); err != nil {
		return Reachability{}, fmt.Errorf("%w: %s: %v", errNoAnswer, addr, err)
	}
	observed := make([]byte, res[1])
	if _, err := io.ReadFull(br, observed); err != nil {
		return Reachability{}, fmt.Errorf("%w: %s: %v", errNoAnswer, addr, err)
	}
	v := Reachability{State: api.ReachBehindNAT, Peer: addr, Observed: string(observed)}
	if res[0] == 1 {
		select {
		case <-back:
			v.State = api.ReachDirect
		case <-time.After(reachBackGrace):
			// Something took the peer's connection at this node's address,
			// but not this node.
		case <-t.done:
			return Reachability{}, fmt.Errorf("%w: shut down", errNoVerdict)
		}
	}
	return v, nil
}

// acceptReach serves a peer's check: it dials the address the check names
// and answers whether that worked.
func (t *relayTransport) acceptReach(c net.Conn, br *bufio.Reader) {
	defer c.Close()
	if !t.takeStream() {
		return
	}
	defer t.releaseStream()
	hdr := make([]byte, 2+reachNonceLen+1)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.dropped.Add(1)
		return
	}
	nonce := hdr[2 : 2+reachNonceLen]
	addr := make([]byte, hdr[len(hdr)-1])
	if _, err := io.ReadFull(br, addr); err != nil {
		t.dropped.Add(1)
		return
	}
	if keys := envelopeKeys(t.keyring); len(keys) > 0 {
		tag := make([]byte, relayTagLen)
		if _, err := io.ReadFull(br, tag); err != nil {
			t.dropped.Add(1)
			return
		}
		if !taggedByAny(keys, tag, kindReach, string(addr), "", nonce) {
			t.refused.Add(1)
			t.log.Debug("refused a reachability check: no gossip key of this node made its tag", "from", c.RemoteAddr())
			return
		}
	}
	ap, err := netip.ParseAddrPort(string(addr))
	if err != nil {
		t.dropped.Add(1)
		t.log.Debug("dropped a reachability check", "from", c.RemoteAddr(), "error", err)
		return
	}
	result := byte(0)
	if out, err := t.dial(ap.String(), reachDialTimeout); err == nil {
		_ = out.SetWriteDeadline(time.Now().Add(reachDialTimeout))
		if _, err := out.Write(append([]byte{relayMagic, reachBackVersion}, nonce...)); err == nil {
			result = 1
		}
		out.Close()
	} else {
		t.log.Debug("a reachability check found no way back", "addr", ap, "error", err)
	}
	observed := c.RemoteAddr().String()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write(append([]byte{result, byte(len(observed))}, observed...))
}

// acceptReachBack takes a peer's back message: it ends the check whose
// nonce it carries.
func (t *relayTransport) acceptReachBack(c net.Conn, br *bufio.Reader) {
	defer c.Close()
	var msg [2 + reachNonceLen]byte
	if _, err := io.ReadFull(br, msg[:]); err != nil {
		return
	}
	var nonce [reachNonceLen]byte
	copy(nonce[:], msg[2:])
	t.reach.mu.Lock()
	back, ok := t.reach.waiting[nonce]
	if ok {
		delete(t.reach.waiting, nonce)
	}
	t.reach.mu.Unlock()
	if ok {
		close(back)
	}
}

// publicIP is the address part of an observed address ("" if there is
// none): what a node behind NAT announces as its public address. The port
// is the NAT's choice for one TCP connection and changes every check.
func publicIP(observed string) string {
	ap, err := netip.ParseAddrPort(observed)
	if err != nil {
		return ""
	}
	return ap.Addr().Unmap().String()
}

// checkAny runs the check against the peers of list in turn (skipping
// self and those in mute, and muting those that close it unanswered) and
// returns the first verdict. asked says whether any peer was asked; err
// is the last reason for no verdict.
func (t *relayTransport) checkAny(list []string, self string, mute map[string]bool, asking func()) (v Reachability, asked bool, err error) {
	for _, addr := range list {
		if addr == self || mute[addr] {
			mute[addr] = true
			continue
		}
		if !asked && asking != nil {
			asking()
		}
		asked = true
		v, err = t.checkReach(addr, self)
		if err != nil {
			if errors.Is(err, errNoAnswer) {
				mute[addr] = true
			}
			t.log.Debug("reachability check gave no verdict", "peer", addr, "error", err)
			continue
		}
		return v, true, nil
	}
	if err == nil {
		err = fmt.Errorf("%w: no peer to ask", errNoVerdict)
	}
	return Reachability{}, asked, err
}

// recheckReach runs the check again every interval after the first
// verdict (docs/routing.md, "Nodes behind NAT"), until the transport
// closes. A node found reachable that is now behind NAT calls attach, as
// at launch. A node found behind NAT that is reachable again becomes
// reachable and calls detach: its home is no longer needed. A node behind
// NAT (found or configured) whose router's public address changed
// records it and calls announce, so the others send its data plane to
// the new one. A node configured behind NAT (its state ReachConfigured)
// stays so whatever the check finds. A round with no verdict changes
// nothing. every <= 0 disables it.
func (t *relayTransport) recheckReach(targets func() []string, attach, detach, announce func(), every time.Duration) {
	defer t.wg.Done()
	if every <= 0 {
		return
	}
	for {
		select {
		case <-t.done:
			return
		case <-time.After(every):
		}
		self, _ := t.origin.Load().(string)
		if self == "" {
			continue
		}
		v, _, err := t.checkAny(targets(), self, map[string]bool{}, nil)
		if err != nil {
			continue
		}
		before := t.reach.get()
		switch {
		case before.State == api.ReachBehindNAT && v.State == api.ReachDirect:
			// Reachable first, so that the announcement that follows
			// the end of the attachment carries no public address.
			t.reach.set(v)
			t.log.Info("this node is reachable on its gossip address again: detaching from its home", "peer", v.Peer)
			detach()
		case before.State.BehindNAT():
			v.State = before.State
			t.reach.set(v)
			if publicIP(v.Observed) != publicIP(before.Observed) {
				t.log.Info("this node's public address changed", "was", publicIP(before.Observed), "now", publicIP(v.Observed))
				announce()
			}
		case v.State == api.ReachBehindNAT:
			t.reach.set(v)
			t.log.Info("this node is now behind NAT: a peer could not connect to its gossip address; attaching to a home", "peer", v.Peer, "seen as", v.Observed)
			attach()
		default:
			t.reach.set(v)
		}
	}
}

// detectNAT runs the check against the peers targets returns (those named
// at launch, then those added at run time: with --kube, the Nodes), in
// turn, until one gives a verdict, or reachGiveUp passes, or every peer
// closed the check without an answer; and it calls then if that verdict
// is ReachBehindNAT. While there is no peer to ask the state stays
// unchecked. On a node configured behind NAT (configured) the state stays
// ReachConfigured, the check only learns the public address, and then is
// called once it has.
func (t *relayTransport) detectNAT(targets func() []string, configured bool, then func()) {
	defer t.wg.Done()
	idle := api.ReachUnchecked
	if configured {
		idle = api.ReachConfigured
	}
	t.reach.set(Reachability{State: idle})
	giveUp := time.Now().Add(reachGiveUp)
	var last error
	mute := map[string]bool{} // peers that closed the check unanswered, and self
	var asking func()         // shows the check under way; a configured node stays configured
	if !configured {
		asking = func() { t.reach.set(Reachability{State: api.ReachChecking}) }
	}
	for time.Now().Before(giveUp) {
		self, _ := t.origin.Load().(string)
		list := targets()
		if self == "" {
			list = nil // not known yet: nothing to ask about
		}
		v, asked, err := t.checkAny(list, self, mute, asking)
		if err != nil && asked {
			last = err
		}
		if err == nil {
			if configured {
				v.State = api.ReachConfigured
				t.reach.set(v)
				then()
				return
			}
			t.reach.set(v)
			if v.State == api.ReachBehindNAT {
				t.log.Info("this node is behind NAT: a peer could not connect to its gossip address; attaching to a home", "peer", v.Peer, "advertised", self, "seen as", v.Observed)
				then()
			} else {
				t.log.Debug("this node is reachable on its gossip address", "peer", v.Peer)
			}
			return
		}
		if len(list) > 0 && !asked {
			break // every peer closed the check: asking again would not help
		}
		select {
		case <-t.done:
			return
		case <-time.After(reachRetry):
		}
	}
	s := Reachability{State: idle}
	if last != nil {
		s.Err = last.Error()
	}
	t.reach.set(s)
}
