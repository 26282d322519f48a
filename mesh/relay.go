package mesh

import (
	"bufio"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Gossip through relays (docs/routing.md, "Gossip through relays").
//
// memberlist talks to every member directly: UDP for probes and gossip,
// TCP for state exchanges and the channels' reliable sends (the IPAM's).
// A member this node cannot reach on the underlay (two sites joined
// through a few hosts) would then be suspected again and again, and never
// exchange state with it. relayTransport wraps memberlist's own
// NetTransport: a packet or stream for a member that has a relay route
// (the daemon sets them from the same choice as the data plane's,
// peer.Relays) goes to the relay inside a small envelope naming the
// target; a node that receives an envelope for another member forwards it
// towards that member (through its own route, or directly), and one for
// itself unwraps it and hands memberlist what was inside. What is relayed
// is memberlist's packet or stream as it was sent, encrypted with the
// mesh's gossip key and labelled: a relay reads only the envelope.
//
// Envelope, in front of a packet or at the start of a stream:
//
//	0xF5 | version 1 | ttl | len(target) target | len(origin) origin
//
// or, between nodes of this release in a mesh with a gossip key, version 2,
// which adds a tag that only holders of the key can make (relayauth.go).
// target is the member's name, origin the sender's advertised gossip
// address (host:port), which memberlist sees as the packet's source. ttl
// starts at relayTTL and each forwarding node takes one off; at 1 it
// drops, so views that disagree for a moment cannot send an envelope
// around a loop for ever. 0xF5 cannot start anything memberlist sends: its
// packets and streams start with a message type (below 32), an encryption
// version (0 or 1) or its label tag (244).

const (
	relayMagic   byte = 0xF5
	relayVersion byte = 1
	// relayTTL bounds the hops of an envelope: above any path the relay
	// choice makes between sites, far below a loop's cost.
	relayTTL byte = 8
	// maxRelayedStreams bounds the streams this node splices for others
	// at once; more are refused (the sender retries with memberlist's own
	// timeouts).
	maxRelayedStreams = 64
	// relayStreamTimeout bounds a spliced stream: memberlist's own
	// exchanges finish within its TCP timeout (10 s).
	relayStreamTimeout = 30 * time.Second
	// relayHeaderTimeout bounds the wait for a stream's first bytes, which
	// decide whether it is an envelope.
	relayHeaderTimeout = 10 * time.Second
)

// relayHop is where envelopes for one target go first; auth says whether
// it reads authenticated envelopes (version 2).
type relayHop struct {
	name, addr string
	auth       bool
}

// relayTable is one consistent view: the next hop per relayed target, the
// gossip address of every live member (where an envelope is forwarded
// when this node reaches its target directly), the live members that read
// authenticated envelopes, and whether an envelope without a tag is still
// accepted (a member of the previous release is live: relayauth.go).
type relayTable struct {
	via      map[string]relayHop
	addrs    map[string]string
	auth     map[string]bool
	acceptV1 bool
}

// RelayStats counts what this node's gossip transport did with envelopes.
type RelayStats struct {
	// Sent counts packets and streams this node sent through a relay.
	Sent uint64
	// Forwarded counts envelopes this node passed on for others.
	Forwarded uint64
	// Dropped counts envelopes refused: malformed, TTL spent, an unknown
	// target, or too many streams at once.
	Dropped uint64
	// Refused counts envelopes whose tag no gossip key of this node made,
	// and envelopes without a tag once no member of the previous release
	// is live (relayauth.go): someone without the mesh key, or a key
	// this node no longer holds.
	Refused uint64
	// Exchanges counts the state exchanges with a directly reached member
	// started because some member had neither a direct path nor a relay
	// (neighbourExchange).
	Exchanges uint64
}

// relayTransport is a memberlist.NodeAwareTransport around a NetTransport.
// Its methods are safe for concurrent use; Shutdown stops its goroutines.
// It never blocks memberlist on a relay: packets are sent as UDP, streams
// are dialled with memberlist's own timeout.
type relayTransport struct {
	inner  *memberlist.NetTransport
	self   string
	origin atomic.Value // string: this node's advertised host:port
	table  atomic.Pointer[relayTable]
	log    *slog.Logger

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	streams  chan struct{} // semaphore of spliced streams

	sent, forwarded, dropped, refused, exchanges atomic.Uint64

	// keyring holds the gossip keys envelopes are tagged and checked with;
	// nil without gossip encryption. Set by newRelayTransport, never
	// changed (the keyring itself is safe for concurrent use).
	keyring *memberlist.Keyring
	// signKey is this node's identity (it signs an attachment to a home,
	// nathome.go) and boundKey the identity bound to a name (base64, ""
	// when none); both nil in most of this package's transport tests. Set
	// by newRelayTransport, never changed.
	signKey  ed25519.PrivateKey
	boundKey func(name string) string

	// tap is nil in production; this package's tests set it (Config.tap,
	// given to newRelayTransport) and never change it.
	tap gossipTap

	failMu sync.Mutex
	failed map[string]time.Time // member -> last failed direct dial

	home  homeSide // nodes behind NAT attached here (nathome.go)
	att   attacher // this node's own home, when it is behind NAT
	reach reacher  // whether others can connect to this node (natcheck.go)

	done     chan struct{}
	wg       sync.WaitGroup
	shutdown sync.Once
}

// gossipTap sees every packet and stream this node sends on the underlay,
// so that this package's tests can cut the links between chosen members (a
// partition, which loopback cannot make otherwise) and count memberlist's
// bytes (TestScaleMembershipLoopback). Production sets none: each send then
// costs one nil check.
type gossipTap interface {
	// packet is told of a packet of n bytes to addr; false drops it, as a
	// cut network would.
	packet(addr string, n int) bool
	// dial is told of a stream about to be dialled to addr; false refuses
	// it.
	dial(addr string) bool
	// conn wraps a stream this node dialled (to count both directions).
	conn(c net.Conn) net.Conn
}

// errTapCut: a stream refused by the test tap (gossipTap.dial).
var errTapCut = errors.New("link cut by the test tap")

// writeTo sends a packet on the underlay, through the tap if there is one.
func (t *relayTransport) writeTo(b []byte, addr string) (time.Time, error) {
	if t.tap != nil && !t.tap.packet(addr, len(b)) {
		return time.Now(), nil
	}
	return t.inner.WriteTo(b, addr)
}

// dial opens a stream on the underlay, through the tap if there is one.
func (t *relayTransport) dial(addr string, timeout time.Duration) (net.Conn, error) {
	if t.tap == nil {
		return t.inner.DialTimeout(addr, timeout)
	}
	if !t.tap.dial(addr) {
		return nil, fmt.Errorf("failed to dial %s: %w", addr, errTapCut)
	}
	c, err := t.inner.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return t.tap.conn(c), nil
}

// relayOptions are the settings the transport's goroutines read from
// the first packet on: newRelayTransport puts them in place before it
// starts those goroutines, and nothing changes them afterwards.
type relayOptions struct {
	keyring  *memberlist.Keyring // nil without gossip encryption
	signKey  ed25519.PrivateKey
	boundKey func(name string) string
	tap      gossipTap
}

// newRelayTransport wraps inner, which is already receiving, and starts
// reading from it; Shutdown stops it.
func newRelayTransport(inner *memberlist.NetTransport, self string, log *slog.Logger, o relayOptions) *relayTransport {
	t := &relayTransport{
		keyring:  o.keyring,
		signKey:  o.signKey,
		boundKey: o.boundKey,
		tap:      o.tap,
		inner:    inner,
		self:     self,
		log:      log,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		streams:  make(chan struct{}, maxRelayedStreams),
		done:     make(chan struct{}),
		failed:   map[string]time.Time{},
		home:     homeSide{attached: map[string]*attachment{}, pending: map[uint64]chan net.Conn{}},
	}
	t.origin.Store("")
	t.table.Store(&relayTable{})
	t.wg.Add(2)
	go t.packets()
	go t.accept()
	return t
}

// setTable replaces the routes and addresses at once.
func (t *relayTransport) setTable(tab *relayTable) { t.table.Store(tab) }

// setOrigin records this node's advertised gossip address.
func (t *relayTransport) setOrigin(addr string) { t.origin.Store(addr) }

func (t *relayTransport) stats() RelayStats {
	return RelayStats{Sent: t.sent.Load(), Forwarded: t.forwarded.Load(), Dropped: t.dropped.Load(), Refused: t.refused.Load(), Exchanges: t.exchanges.Load()}
}

// hop returns the relay for target, if it has one.
func (t *relayTransport) hop(target string) (relayHop, bool) {
	if target == "" || target == t.self || len(target) > 255 {
		return relayHop{}, false
	}
	h, ok := t.table.Load().via[target]
	return h, ok && h.addr != ""
}

func (t *relayTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

func (t *relayTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.writeTo(b, addr)
}

func (t *relayTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if err := t.sendAttached(a.Name, t.origin.Load().(string), b); err != errNotAttached {
		return time.Now(), err
	}
	if h, ok := t.hop(a.Name); ok {
		t.sent.Add(1)
		eh := envelopeHeader{ttl: relayTTL, target: a.Name, origin: t.origin.Load().(string)}
		return t.writeTo(t.envelope(kindPacket, eh, h.auth, b), h.addr)
	}
	return t.writeTo(b, a.Addr)
}

func (t *relayTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *relayTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.dial(addr, timeout)
}

func (t *relayTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if c, err := t.dialAttached(a.Name, timeout); err != errNotAttached {
		return c, err
	}
	h, ok := t.hop(a.Name)
	if !ok {
		c, err := t.dial(a.Addr, timeout)
		t.noteDirect(a.Name, err)
		return c, err
	}
	t.sent.Add(1)
	eh := envelopeHeader{ttl: relayTTL, target: a.Name, origin: t.origin.Load().(string)}
	return t.dialVia(h.addr, eh, h.auth, timeout)
}

// dialVia opens a stream to addr that starts with the envelope h, of
// version 2 if auth (the hop at addr reads it).
func (t *relayTransport) dialVia(addr string, h envelopeHeader, auth bool, timeout time.Duration) (net.Conn, error) {
	c, err := t.dial(addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("failed to dial relay %s for %s: %w", addr, h.target, err)
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write(t.envelope(kindStream, h, auth, nil)); err != nil {
		c.Close()
		return nil, fmt.Errorf("failed to write the relay envelope for %s to %s: %w", h.target, addr, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

func (t *relayTransport) StreamCh() <-chan net.Conn { return t.streamCh }

func (t *relayTransport) Shutdown() error {
	var err error
	t.shutdown.Do(func() {
		close(t.done)
		// The NetTransport's listeners may be blocked handing over a
		// packet or stream that nobody reads any more, and its Shutdown
		// waits for them: drain until it returns.
		stop := make(chan struct{})
		go func() {
			for {
				select {
				case <-t.inner.PacketCh():
				case c := <-t.inner.StreamCh():
					c.Close()
				case <-stop:
					return
				}
			}
		}()
		err = t.inner.Shutdown()
		close(stop)
		t.wg.Wait()
	})
	return err
}

// directFailureMemory is how long a failed direct dial to a member counts
// as its direct path being down for gossip. Once relayed, gossip to it
// no longer tries the direct path, so the mark expires and the next
// exchange tries it again: one failed dial a minute per such member.
const directFailureMemory = time.Minute

// maxDirectFailures bounds the marks; members are bounded far below it.
const maxDirectFailures = 4096

// noteDirect records the outcome of a direct dial to a member.
func (t *relayTransport) noteDirect(name string, err error) {
	if name == "" || name == t.self {
		return
	}
	t.failMu.Lock()
	defer t.failMu.Unlock()
	if err == nil {
		delete(t.failed, name)
		return
	}
	if _, ok := t.failed[name]; ok || len(t.failed) < maxDirectFailures {
		t.failed[name] = time.Now()
	}
}

// directFailures returns the members a direct dial failed to within
// directFailureMemory, and forgets older marks.
func (t *relayTransport) directFailures(now time.Time) []string {
	t.failMu.Lock()
	defer t.failMu.Unlock()
	var out []string
	for name, at := range t.failed {
		if now.Sub(at) >= directFailureMemory {
			delete(t.failed, name)
			continue
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// neighbourExchange picks the gossip address of a member to exchange
// state with when some live member has neither a direct path (a direct
// dial to it failed within directFailureMemory) nor a relay: one this node
// reaches directly (no failed dial, no relay), at random, or none.
//
// Why: the relay routes come from the members' path reports, which travel
// by gossip, and gossip to a member of a far site needs those routes. A
// node that joins a far site, or a site's end of the link whose reports
// are behind, would otherwise wait for memberlist's periodic exchange to
// pick, at random, a member that can tell it the reports it lacks (a
// chain of such picks across the sites took more than two minutes now and
// then). A directly reached member is the one most likely to know them.
func (t *relayTransport) neighbourExchange(now time.Time) (string, bool) {
	failed := t.directFailures(now)
	tab := t.table.Load()
	unrouted := false
	for _, name := range failed {
		if _, live := tab.addrs[name]; live {
			if _, routed := tab.via[name]; !routed {
				unrouted = true
				break
			}
		}
	}
	if !unrouted {
		return "", false
	}
	var direct []string
	for name, addr := range tab.addrs {
		if _, routed := tab.via[name]; !routed && !slices.Contains(failed, name) {
			direct = append(direct, addr)
		}
	}
	if len(direct) == 0 {
		return "", false
	}
	return direct[rand.IntN(len(direct))], true
}

// envelope returns the envelope h of kind followed by payload: of version
// 2 when the hop it goes to reads it (auth) and this node has a gossip
// key, with h's tag when it has one (forwarding what was checked here)
// or a new one; of version 1 otherwise.
func (t *relayTransport) envelope(kind byte, h envelopeHeader, auth bool, payload []byte) []byte {
	var tag []byte
	if auth {
		tag = h.tag
		if tag == nil {
			tag = t.sealTag(kind, h, payload)
		}
	}
	version := relayVersion
	if tag != nil {
		version = relayAuthVersion
	}
	b := make([]byte, 0, 5+len(h.target)+len(h.origin)+len(tag)+len(payload))
	b = append(b, relayMagic, version, h.ttl, byte(len(h.target)))
	b = append(b, h.target...)
	b = append(b, byte(len(h.origin)))
	b = append(b, h.origin...)
	b = append(b, tag...)
	return append(b, payload...)
}

// errEnvelope: a malformed envelope.
var errEnvelope = errors.New("malformed gossip relay envelope")

// envelopeHeader is an envelope without its payload; tag is set for
// version 2 only.
type envelopeHeader struct {
	version, ttl   byte
	target, origin string
	tag            []byte
}

// readEnvelope reads an envelope's header (its magic included) from r.
func readEnvelope(r io.Reader) (envelopeHeader, error) {
	var h envelopeHeader
	var fixed [4]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return h, fmt.Errorf("%w: %w", errEnvelope, err)
	}
	if fixed[0] != relayMagic || (fixed[1] != relayVersion && fixed[1] != relayAuthVersion) || fixed[3] == 0 {
		return h, fmt.Errorf("%w: header %x", errEnvelope, fixed)
	}
	h.version, h.ttl = fixed[1], fixed[2]
	target := make([]byte, fixed[3])
	if _, err := io.ReadFull(r, target); err != nil {
		return h, fmt.Errorf("%w: target: %w", errEnvelope, err)
	}
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return h, fmt.Errorf("%w: origin: %w", errEnvelope, err)
	}
	origin := make([]byte, n[0])
	if _, err := io.ReadFull(r, origin); err != nil {
		return h, fmt.Errorf("%w: origin: %w", errEnvelope, err)
	}
	h.target, h.origin = string(target), string(origin)
	if h.version == relayAuthVersion {
		h.tag = make([]byte, relayTagLen)
		if _, err := io.ReadFull(r, h.tag); err != nil {
			return h, fmt.Errorf("%w: tag: %w", errEnvelope, err)
		}
	}
	return h, nil
}

// forwardTo returns where an envelope for h.target goes from this node
// (its relay, or the target itself) and whether that hop reads
// authenticated envelopes; false when the target is no live member (this
// node relays only to members) or the TTL is spent.
func (t *relayTransport) forwardTo(h envelopeHeader) (string, bool, bool) {
	if h.ttl <= 1 {
		return "", false, false
	}
	tab := t.table.Load()
	addr, ok := tab.addrs[h.target]
	if !ok {
		return "", false, false
	}
	if hop, ok := tab.via[h.target]; ok && hop.addr != "" {
		return hop.addr, hop.auth, true
	}
	return addr, tab.auth[h.target], true
}

// refuse counts and logs an envelope that failed authentication.
func (t *relayTransport) refuse(what string, from net.Addr, h envelopeHeader) {
	t.refused.Add(1)
	t.log.Debug("refused an unauthenticated gossip "+what, "from", from, "target", h.target, "version", h.version)
}

// originAddr parses an envelope's origin as memberlist's packet source.
func originAddr(s string, fallback net.Addr) net.Addr {
	if a, err := net.ResolveUDPAddr("udp", s); err == nil && s != "" {
		return a
	}
	return fallback
}

func (t *relayTransport) packets() {
	defer t.wg.Done()
	for {
		var p *memberlist.Packet
		select {
		case p = <-t.inner.PacketCh():
		case <-t.done:
			return
		}
		if len(p.Buf) > 0 && p.Buf[0] == relayMagic {
			p = t.relayPacket(p)
			if p == nil {
				continue
			}
		}
		select {
		case t.packetCh <- p:
		case <-t.done:
			return
		}
	}
}

// relayPacket unwraps an envelope for this node (returning the packet for
// memberlist) or forwards it (returning nil).
func (t *relayTransport) relayPacket(p *memberlist.Packet) *memberlist.Packet {
	r := &byteReader{b: p.Buf}
	h, err := readEnvelope(r)
	if err != nil {
		t.dropped.Add(1)
		t.log.Debug("dropped a gossip packet", "from", p.From, "error", err)
		return nil
	}
	if !t.authentic(kindPacket, h, r.b) {
		t.refuse("packet", p.From, h)
		return nil
	}
	if h.target == t.self {
		return &memberlist.Packet{Buf: r.b, From: originAddr(h.origin, p.From), Timestamp: p.Timestamp}
	}
	if err := t.sendAttached(h.target, h.origin, r.b); err != errNotAttached {
		if err == nil {
			t.forwarded.Add(1)
		}
		return nil
	}
	to, auth, ok := t.forwardTo(h)
	if !ok {
		t.dropped.Add(1)
		t.log.Debug("dropped a gossip packet to relay", "from", p.From, "target", h.target, "ttl", h.ttl)
		return nil
	}
	h.ttl--
	if _, err := t.writeTo(t.envelope(kindPacket, h, auth, r.b), to); err != nil {
		t.log.Debug("failed to relay a gossip packet", "target", h.target, "to", to, "error", err)
		return nil
	}
	t.forwarded.Add(1)
	return nil
}

func (t *relayTransport) accept() {
	defer t.wg.Done()
	for {
		select {
		case c := <-t.inner.StreamCh():
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				t.stream(c)
			}()
		case <-t.done:
			return
		}
	}
}

// stream looks at an incoming stream's first byte: memberlist's own go to
// memberlist as they are; an envelope for this node goes to memberlist
// without its header; one for another member is spliced towards it.
func (t *relayTransport) stream(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(relayHeaderTimeout))
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	if first[0] == relayMagic {
		if two, err := br.Peek(2); err == nil && two[1] == attachVersion {
			t.acceptAttach(c, br)
			return
		} else if err == nil && two[1] == reverseVersion {
			t.acceptReverse(c, br)
			return
		} else if err == nil && two[1] == reachVersion {
			t.acceptReach(c, br)
			return
		} else if err == nil && two[1] == reachBackVersion {
			t.acceptReachBack(c, br)
			return
		}
		h, err := readEnvelope(br)
		if err != nil {
			t.dropped.Add(1)
			t.log.Debug("dropped a gossip stream", "from", c.RemoteAddr(), "error", err)
			c.Close()
			return
		}
		if !t.authentic(kindStream, h, nil) {
			t.refuse("stream", c.RemoteAddr(), h)
			c.Close()
			return
		}
		if h.target != t.self {
			t.splice(c, br, h)
			return
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	select {
	case t.streamCh <- &bufferedConn{Conn: c, r: br}:
	case <-t.done:
		c.Close()
	}
}

// splice forwards an enveloped stream for another member and copies both
// ways until either side closes or relayStreamTimeout passes.
func (t *relayTransport) splice(c net.Conn, br *bufio.Reader, h envelopeHeader) {
	defer c.Close()
	if _, attached := t.attachedTo(h.target); attached {
		t.spliceAttached(c, br, h)
		return
	}
	to, auth, ok := t.forwardTo(h)
	if !ok {
		t.dropped.Add(1)
		t.log.Debug("dropped a gossip stream to relay", "from", c.RemoteAddr(), "target", h.target, "ttl", h.ttl)
		return
	}
	if !t.takeStream() {
		t.log.Debug("dropped a gossip stream to relay: too many at once", "target", h.target)
		return
	}
	defer t.releaseStream()
	next := h
	next.ttl--
	out, err := t.dialVia(to, next, auth, relayHeaderTimeout)
	if _, relayed := t.table.Load().via[h.target]; !relayed {
		t.noteDirect(h.target, err)
	}
	if err != nil {
		t.log.Debug("failed to relay a gossip stream", "target", h.target, "error", err)
		return
	}
	defer out.Close()
	t.forwarded.Add(1)
	t.pipe(c, br, out)
}

// takeStream takes one of the maxRelayedStreams slots of streams this
// node serves for others (relayed, spliced, reachability checks), without
// waiting; when none is free it counts the stream dropped and returns
// false. A true must be followed by releaseStream.
func (t *relayTransport) takeStream() bool {
	select {
	case t.streams <- struct{}{}:
		return true
	default:
		t.dropped.Add(1)
		return false
	}
}

func (t *relayTransport) releaseStream() { <-t.streams }

// spliceAttached is splice for a target attached here: the stream goes
// to it through a stream it dials back.
func (t *relayTransport) spliceAttached(c net.Conn, br *bufio.Reader, h envelopeHeader) {
	if !t.takeStream() {
		return
	}
	defer t.releaseStream()
	out, err := t.dialAttached(h.target, relayHeaderTimeout)
	if err != nil {
		t.log.Debug("failed to relay a gossip stream to a node behind NAT", "target", h.target, "error", err)
		return
	}
	defer out.Close()
	t.forwarded.Add(1)
	t.pipe(c, br, out)
}

// pipe copies both ways between c (read through br) and out until either
// side closes or relayStreamTimeout passes.
func (t *relayTransport) pipe(c net.Conn, br *bufio.Reader, out net.Conn) {
	deadline := time.Now().Add(relayStreamTimeout)
	_ = c.SetDeadline(deadline)
	_ = out.SetDeadline(deadline)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, br); closeWrite(out); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, out); closeWrite(c); done <- struct{}{} }()
	select {
	case <-done:
		<-done
	case <-t.done:
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

// bufferedConn is a stream whose first bytes were read ahead.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// byteReader reads a packet's envelope and leaves the rest in b.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

var _ memberlist.NodeAwareTransport = (*relayTransport)(nil)

// SetRelays sets the member through which this node sends gossip to each
// member in via (target name to relay name: the data plane's next hop,
// peer.Relays); members absent from via, or whose relay is not a live
// member reading envelopes (a node older than the gossip relay), get their
// gossip directly. It also refreshes the addresses this node forwards
// others' envelopes to (the live members'), which of them read
// authenticated envelopes, and whether envelopes without a tag are still
// accepted (relayauth.go). Call it again when members change. Safe for
// concurrent use; it does not block on the network.
func (m *Membership) SetRelays(via map[string]string) {
	tab := &relayTable{via: make(map[string]relayHop, len(via)), addrs: map[string]string{}, auth: map[string]bool{}}
	m.mu.Lock()
	relays := map[string]bool{}
	homes := map[string]string{}
	for name, mem := range m.members {
		if !mem.Self && mem.State.Live() && mem.Addr.IsValid() {
			tab.addrs[name] = mem.Addr.String()
			relays[name] = mem.Meta.GossipRelay == int(relayVersion)
			tab.auth[name] = mem.Meta.GossipRelayAuth == int(relayAuthVersion)
			if mem.Meta.Home != "" {
				homes[name] = mem.Meta.Home
			}
			if relays[name] && !tab.auth[name] {
				tab.acceptV1 = true // a node of the previous release
			}
		}
	}
	m.mu.Unlock()
	for target, hop := range via {
		if a, ok := tab.addrs[hop]; ok && hop != target && relays[hop] {
			tab.via[target] = relayHop{name: hop, addr: a, auth: tab.auth[hop]}
		}
	}
	// A node behind NAT is reached through its home only (nathome.go),
	// whatever the data plane's choice; the home itself reaches it
	// through the attachment.
	for target, home := range homes {
		if a, ok := tab.addrs[home]; ok && home != target && relays[home] {
			tab.via[target] = relayHop{name: home, addr: a, auth: tab.auth[home]}
		} else if home != m.cfg.Name {
			delete(tab.via, target)
		}
	}
	m.relay.setTable(tab)
}

// RelayStats returns what the gossip relay has done since the start.
func (m *Membership) RelayStats() RelayStats { return m.relay.stats() }

// DirectFailures names the members this node recently failed to reach on
// their gossip port directly (a TCP dial that failed in the last minute):
// the gossip-level signal for members whose data-plane path is not probed
// (one of the two has no overlay IP yet, as a node that joins before it
// has any space). The daemon publishes them among its down paths
// (docs/routing.md, "Gossip through relays").
//
// A member that announces a home (a node behind NAT) is left out: gossip
// to it goes through its home whatever the paths say (SetRelays), and a
// direct dial to it fails by construction, which says nothing of its
// data-plane path. Such a dial happens when this node learns of it before
// its home (its join, a state exchange it started): counted, it relayed
// the pair's traffic for a minute although the probes found the path up.
// Safe for concurrent use.
func (m *Membership) DirectFailures() []string {
	failed := m.relay.directFailures(time.Now())
	if len(failed) == 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.DeleteFunc(failed, func(name string) bool {
		mem := m.members[name]
		return mem != nil && mem.Meta.Home != ""
	})
}
