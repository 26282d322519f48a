package mesh

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Nodes behind NAT (docs/routing.md, "Nodes behind NAT").
//
// A node that can only connect out (Config.BehindNAT: a host behind a
// masquerading router) is unreachable on its gossip port, so memberlist's
// probes, state exchanges and the IPAM's sends to it would all fail and
// the others would declare it dead. Such a node attaches to a home: a
// member it can reach, to which it keeps one TCP connection open. The
// home carries, over that connection, what others send it: packets as
// frames, and streams by asking the node to dial back (a reverse stream),
// which it then splices with the stream that waits. The node announces
// its home in its metadata (Meta.Home), and every member sends it gossip
// through the home as through a relay (SetRelays). What the node sends
// itself goes out directly, as any outbound connection through its NAT.
//
// On the home's gossip port, after relayMagic:
//
//	attach:  0xF5 | 3 | len(name) name | nonce (16 bytes), then (with a
//	         gossip key) the home sends a nonce of 16 bytes and the node
//	         answers the tag of (kind 'a', name, the home's nonce) under
//	         relayMACKey and its identity's ed25519 signature of
//	         attachSigned (zeros without an identity; a home refuses it
//	         for a name bound to an identity, binding.go); the home then sends a hello frame with its own
//	         name and (with a key) the tag of (kind 'h', its name, the
//	         node's nonce), so each end knows the other holds the key;
//	         frames follow
//	reverse: 0xF5 | 4 | stream id (8 bytes), then memberlist's stream
//
// Frames, from the home: type (1) | length (2, big endian) | payload:
// 'h' hello (the home's name), 'p' a packet (len(origin) origin packet),
// 's' a stream to dial back (its id), 'k' keepalive. From the node: 'k'
// only. Either end drops the attachment when nothing arrived for
// attachTimeout; the node then attaches again, to the same home or
// another.

const (
	attachVersion  byte = 3
	reverseVersion byte = 4
	attachNonceLen      = 16
	// attachKeepalive is how often each end of an attachment says it is
	// there; attachTimeout is how long without a frame ends it.
	attachKeepalive = 5 * time.Second
	attachTimeout   = 20 * time.Second
	// maxAttached bounds the nodes one home carries.
	maxAttached = 256
	// reverseWait bounds the wait for a node to dial a stream back.
	reverseWait = 10 * time.Second
	// kindAttach and kindHello bind the tags of the two ends of an
	// attachment.
	kindAttach byte = 'a'
	kindHello  byte = 'h'
)

const (
	frameHello     byte = 'h'
	framePacket    byte = 'p'
	frameStream    byte = 's'
	frameKeepalive byte = 'k'
)

// errNotAttached: the target has no attachment here.
var errNotAttached = errors.New("not attached here")

// attachment is a node behind NAT attached to this node (the home side).
type attachment struct {
	name string
	conn net.Conn
	wmu  sync.Mutex
	done chan struct{}
	once sync.Once
}

func (a *attachment) close() {
	a.once.Do(func() {
		close(a.done)
		a.conn.Close()
	})
}

// writeFrame sends one frame; an error closes the attachment.
func (a *attachment) writeFrame(typ byte, payload []byte) error {
	if len(payload) > 0xffff {
		return fmt.Errorf("frame of %d bytes for %s: too long", len(payload), a.name)
	}
	b := make([]byte, 3, 3+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint16(b[1:], uint16(len(payload)))
	b = append(b, payload...)
	a.wmu.Lock()
	defer a.wmu.Unlock()
	_ = a.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.conn.Write(b); err != nil {
		a.close()
		return fmt.Errorf("failed to write to the attachment of %s: %w", a.name, err)
	}
	return nil
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var h [3]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	p := make([]byte, binary.BigEndian.Uint16(h[1:]))
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return h[0], p, nil
}

// keepalive calls send every attachKeepalive until stop is closed or send
// fails: one end of an attachment saying it is there.
func keepalive(stop <-chan struct{}, send func() error) {
	tk := time.NewTicker(attachKeepalive)
	defer tk.Stop()
	for {
		select {
		case <-tk.C:
			if send() != nil {
				return
			}
		case <-stop:
			return
		}
	}
}

// attachSignDomain separates attachment signatures from the identity's
// other signatures (node metadata, IPAM infos).
const attachSignDomain = "mesh attach to a home v1"

// attachSigned is what a node behind NAT signs with its identity to
// attach: the domain, its name and the home's nonce.
func attachSigned(name string, nonce []byte) []byte {
	b := append([]byte(attachSignDomain), 0)
	b = append(b, name...)
	b = append(b, 0)
	return append(b, nonce...)
}

// attachTag is the tag a node behind NAT answers the home's nonce with.
func attachTag(macKey []byte, name string, nonce []byte) []byte {
	return envelopeTag(macKey, kindAttach, name, "", nonce)
}

// homeSide is what a node keeps of the nodes attached to it.
type homeSide struct {
	mu       sync.Mutex
	attached map[string]*attachment
	pending  map[uint64]chan net.Conn
}

// attachedTo returns the attachment of name, if it is attached here.
func (t *relayTransport) attachedTo(name string) (*attachment, bool) {
	t.home.mu.Lock()
	defer t.home.mu.Unlock()
	a, ok := t.home.attached[name]
	return a, ok
}

// attachedNames names the nodes behind NAT attached to this node.
func (t *relayTransport) attachedNames() []string {
	t.home.mu.Lock()
	defer t.home.mu.Unlock()
	out := make([]string, 0, len(t.home.attached))
	for n := range t.home.attached {
		out = append(out, n)
	}
	return out
}

// acceptAttach serves an attachment on c, whose first two bytes (magic
// and attachVersion) br still holds. It returns when the attachment ends.
func (t *relayTransport) acceptAttach(c net.Conn, br *bufio.Reader) {
	defer c.Close()
	var hdr [3]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil || hdr[2] == 0 {
		t.dropped.Add(1)
		return
	}
	nameB := make([]byte, hdr[2])
	if _, err := io.ReadFull(br, nameB); err != nil {
		t.dropped.Add(1)
		return
	}
	name := string(nameB)
	theirNonce := make([]byte, attachNonceLen)
	if _, err := io.ReadFull(br, theirNonce); err != nil {
		t.dropped.Add(1)
		return
	}
	hello := []byte(t.self)
	if keys := envelopeKeys(t.keyring); len(keys) > 0 {
		hello = append(hello, envelopeTag(keys[0], kindHello, t.self, "", theirNonce)...)
		nonce := make([]byte, attachNonceLen)
		_, _ = rand.Read(nonce)
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(nonce); err != nil {
			return
		}
		proof := make([]byte, relayTagLen+ed25519.SignatureSize)
		if _, err := io.ReadFull(br, proof); err != nil {
			t.dropped.Add(1)
			return
		}
		tag, sig := proof[:relayTagLen], proof[relayTagLen:]
		ok := taggedByAny(keys, tag, kindAttach, name, "", nonce)
		// A name bound to an identity (binding.go) attaches only with
		// that identity's signature: another holder of the mesh key
		// cannot take over the name's inbound gossip.
		if ok && t.boundKey != nil {
			if bound := t.boundKey(name); bound != "" {
				pub, err := base64.StdEncoding.DecodeString(bound)
				ok = err == nil && len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, attachSigned(name, nonce), sig)
			}
		}
		if !ok {
			t.refuse("attachment", c.RemoteAddr(), envelopeHeader{version: attachVersion, target: name})
			return
		}
	}
	a := &attachment{name: name, conn: c, done: make(chan struct{})}
	t.home.mu.Lock()
	old, had := t.home.attached[name]
	if !had && len(t.home.attached) >= maxAttached {
		t.home.mu.Unlock()
		t.dropped.Add(1)
		t.log.Warn("refused a node behind NAT: too many attached", "node", name, "max", maxAttached)
		return
	}
	t.home.attached[name] = a
	t.home.mu.Unlock()
	if had {
		old.close()
	}
	t.log.Info("node behind NAT attached", "node", name, "from", c.RemoteAddr())
	defer func() {
		t.home.mu.Lock()
		if t.home.attached[name] == a {
			delete(t.home.attached, name)
		}
		t.home.mu.Unlock()
		a.close()
		t.log.Info("node behind NAT detached", "node", name)
	}()
	_ = c.SetWriteDeadline(time.Time{})
	if err := a.writeFrame(frameHello, hello); err != nil {
		return
	}
	go func() {
		select {
		case <-t.done:
			a.close()
		case <-a.done:
		}
	}()
	go keepalive(a.done, func() error { return a.writeFrame(frameKeepalive, nil) })
	for {
		_ = c.SetReadDeadline(time.Now().Add(attachTimeout))
		if _, _, err := readFrame(br); err != nil {
			return
		}
	}
}

// acceptReverse hands a stream a node behind NAT dialled back to the
// stream waiting for it.
func (t *relayTransport) acceptReverse(c net.Conn, br *bufio.Reader) {
	var hdr [10]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		c.Close()
		return
	}
	id := binary.BigEndian.Uint64(hdr[2:])
	t.home.mu.Lock()
	ch, ok := t.home.pending[id]
	delete(t.home.pending, id)
	t.home.mu.Unlock()
	if !ok {
		t.dropped.Add(1)
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	ch <- &bufferedConn{Conn: c, r: br}
}

// sendAttached hands an attached node a packet from origin.
func (t *relayTransport) sendAttached(target, origin string, packet []byte) error {
	a, ok := t.attachedTo(target)
	if !ok {
		return errNotAttached
	}
	p := make([]byte, 0, 1+len(origin)+len(packet))
	p = append(p, byte(len(origin)))
	p = append(p, origin...)
	p = append(p, packet...)
	return a.writeFrame(framePacket, p)
}

// dialAttached asks an attached node to dial a stream back and returns it.
func (t *relayTransport) dialAttached(target string, timeout time.Duration) (net.Conn, error) {
	a, ok := t.attachedTo(target)
	if !ok {
		return nil, errNotAttached
	}
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	id := binary.BigEndian.Uint64(idb[:])
	ch := make(chan net.Conn, 1)
	t.home.mu.Lock()
	t.home.pending[id] = ch
	t.home.mu.Unlock()
	defer func() {
		t.home.mu.Lock()
		delete(t.home.pending, id)
		t.home.mu.Unlock()
	}()
	if err := a.writeFrame(frameStream, idb[:]); err != nil {
		return nil, err
	}
	if timeout <= 0 || timeout > reverseWait {
		timeout = reverseWait
	}
	select {
	case c := <-ch:
		return c, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("%s did not dial its stream back within %v", target, timeout)
	case <-a.done:
		return nil, fmt.Errorf("the attachment of %s ended", target)
	case <-t.done:
		return nil, errors.New("gossip transport shut down")
	}
}

// attacher is the node-behind-NAT side: it keeps one attachment to a home.
type attacher struct {
	mu       sync.Mutex
	home     string // the home's name, "" while detached
	onChange func() // called when home changes (the membership announces it)
	// stop ends the attach loop that runs, and its attachment; nil while
	// none runs (startAttach, stopAttach).
	stop chan struct{}
}

// startAttach starts the attach loop towards candidates() unless one
// runs already. Safe for concurrent use.
func (t *relayTransport) startAttach(candidates func() []string) {
	t.att.mu.Lock()
	defer t.att.mu.Unlock()
	if t.att.stop != nil {
		return
	}
	t.att.stop = make(chan struct{})
	t.wg.Add(1)
	go t.attachLoop(candidates, t.att.stop)
}

// stopAttach ends the attach loop and closes its attachment, if one
// runs: the home is then "" (and onChange called) once the attachment has
// ended. It does not wait. Safe for concurrent use.
func (t *relayTransport) stopAttach() {
	t.att.mu.Lock()
	defer t.att.mu.Unlock()
	if t.att.stop != nil {
		close(t.att.stop)
		t.att.stop = nil
	}
}

// homeName names the member this node is attached to, "" when none.
func (t *relayTransport) homeName() string {
	t.att.mu.Lock()
	defer t.att.mu.Unlock()
	return t.att.home
}

// attachLoop keeps this node attached to a home, trying candidates() in
// turn, until the transport shuts down or stop is closed.
func (t *relayTransport) attachLoop(candidates func() []string, stop <-chan struct{}) {
	defer t.wg.Done()
	backoff := time.Second
	for {
		attached := false
		for _, addr := range candidates() {
			err := t.attachTo(addr, func() { attached = true; backoff = time.Second }, stop)
			if attached {
				break // the attachment ended: start again from the first candidate
			}
			t.log.Debug("failed to attach to a home", "addr", addr, "error", err)
			select {
			case <-t.done:
				return
			case <-stop:
				return
			default:
			}
		}
		select {
		case <-t.done:
			return
		case <-stop:
			return
		case <-time.After(backoff):
		}
		if !attached {
			backoff = min(2*backoff, 10*time.Second)
		}
	}
}

// attachTo attaches to the home at addr and serves the attachment until
// it ends, or the transport shuts down, or detach is closed; up is called
// once the home said hello.
func (t *relayTransport) attachTo(addr string, up func(), detach <-chan struct{}) error {
	c, err := t.dial(addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-t.done:
			c.Close()
		case <-detach:
			c.Close()
		case <-stop:
		}
	}()
	hdr := append([]byte{relayMagic, attachVersion, byte(len(t.self))}, t.self...)
	myNonce := make([]byte, attachNonceLen)
	_, _ = rand.Read(myNonce)
	hdr = append(hdr, myNonce...)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(hdr); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	keys := envelopeKeys(t.keyring)
	if len(keys) > 0 {
		nonce := make([]byte, attachNonceLen)
		if _, err := io.ReadFull(br, nonce); err != nil {
			return fmt.Errorf("no nonce from %s: %w", addr, err)
		}
		sig := make([]byte, ed25519.SignatureSize) // none without an identity (tests)
		if t.signKey != nil {
			sig = ed25519.Sign(t.signKey, attachSigned(t.self, nonce))
		}
		if _, err := c.Write(append(attachTag(keys[0], t.self, nonce), sig...)); err != nil {
			return err
		}
	}
	typ, p, err := readFrame(br)
	if err != nil || typ != frameHello {
		return fmt.Errorf("no hello from %s: %v", addr, err)
	}
	if len(keys) > 0 {
		if len(p) <= relayTagLen {
			return fmt.Errorf("a hello without a tag from %s", addr)
		}
		name, tag := string(p[:len(p)-relayTagLen]), p[len(p)-relayTagLen:]
		if !taggedByAny(keys, tag, kindHello, name, "", myNonce) {
			t.refused.Add(1)
			return fmt.Errorf("the home at %s does not hold the mesh key", addr)
		}
		p = p[:len(p)-relayTagLen]
	}
	if len(p) == 0 {
		return fmt.Errorf("an empty hello from %s", addr)
	}
	home := string(p)
	_ = c.SetDeadline(time.Time{})
	var wmu sync.Mutex
	write := func(typ byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Write([]byte{typ, 0, 0})
		return err
	}
	t.setHome(home)
	defer t.setHome("")
	up()
	t.log.Info("attached to a home (this node is behind NAT)", "home", home, "addr", addr)
	go keepalive(stop, func() error {
		err := write(frameKeepalive)
		if err != nil {
			c.Close()
		}
		return err
	})
	for {
		_ = c.SetReadDeadline(time.Now().Add(attachTimeout))
		typ, p, err := readFrame(br)
		if err != nil {
			t.log.Info("detached from the home", "home", home, "error", err)
			return err
		}
		switch typ {
		case framePacket:
			if len(p) < 1 || len(p) < 1+int(p[0]) {
				continue
			}
			origin := string(p[1 : 1+p[0]])
			pkt := &memberlist.Packet{Buf: p[1+p[0]:], From: originAddr(origin, c.RemoteAddr()), Timestamp: time.Now()}
			select {
			case t.packetCh <- pkt:
			case <-t.done:
				return nil
			}
		case frameStream:
			if len(p) != 8 {
				continue
			}
			go t.dialBack(addr, p)
		}
	}
}

// dialBack opens the reverse stream id to the home and hands it to
// memberlist as an incoming stream.
func (t *relayTransport) dialBack(addr string, id []byte) {
	c, err := t.dial(addr, 5*time.Second)
	if err != nil {
		t.log.Debug("failed to dial a stream back to the home", "addr", addr, "error", err)
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append([]byte{relayMagic, reverseVersion}, id...)); err != nil {
		c.Close()
		return
	}
	_ = c.SetWriteDeadline(time.Time{})
	select {
	case t.streamCh <- c:
	case <-t.done:
		c.Close()
	}
}

func (t *relayTransport) setHome(name string) {
	t.att.mu.Lock()
	changed := t.att.home != name
	t.att.home = name
	f := t.att.onChange
	t.att.mu.Unlock()
	if changed && f != nil {
		f()
	}
}
