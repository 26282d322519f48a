package daemon

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/mesh"
)

// The port a node's NAT gives its data plane (docs/routing.md, "The NAT's
// port"). A node behind NAT knows the public address its NAT gives it (the
// reachability check saw it), but not the UDP port its WireGuard packets
// leave with: a NAT that keeps the port makes it DPPort, one that maps it
// to another port the same for every destination (an endpoint-independent
// mapping, what most home and office routers do) makes it another. The
// others see that port as the endpoint of the node's WireGuard peer once
// its packets reach them (WireGuard's roaming); so the node asks a few of
// them, and announces the port they agree on (Meta.PublicPort). Then a
// node that has not heard from it yet, and above all another node behind
// NAT, sends to the port its NAT lets answers in through, and two nodes
// behind two such NATs punch a hole as two nodes behind port-keeping NATs
// do.

const (
	// natPortEvery is how often a node behind NAT asks while it has no
	// verdict, and how long it waits for the answers of one round.
	natPortEvery = 10 * time.Second
	// natPortRecheck is how often it asks again once it has one.
	natPortRecheck = 5 * time.Minute
	// natPortAsk is how many peers one round asks.
	natPortAsk = 3
	// natPortFresh is how recent the asker's handshake with a peer must
	// be for the peer's view of its endpoint to count (and for a peer to
	// answer at all): WireGuard renews a session's handshake every 2
	// minutes while packets flow, and keepalives make them flow.
	natPortFresh = 3 * time.Minute
	// natPortAnswersPerSecond bounds the answers a node sends: each reads
	// the data plane's peers.
	natPortAnswersPerSecond = 10
)

// Message kinds of mesh.ChannelNATPort.
const (
	natPortQuery  byte = 1 // kind, 16-byte nonce
	natPortAnswer byte = 2 // kind, 16-byte nonce, length, "ip:port"
)

const natPortNonceLen = 16

var errNATPortMessage = errors.New("malformed NAT port message")

// natPortMsg is a decoded message of the channel.
type natPortMsg struct {
	kind  byte
	nonce [natPortNonceLen]byte
	seen  netip.AddrPort // answers only
}

func (m natPortMsg) encode() []byte {
	out := append([]byte{m.kind}, m.nonce[:]...)
	if m.kind == natPortAnswer {
		s := m.seen.String()
		out = append(out, byte(len(s)))
		out = append(out, s...)
	}
	return out
}

func decodeNATPortMsg(b []byte) (natPortMsg, error) {
	var m natPortMsg
	if len(b) < 1+natPortNonceLen {
		return m, fmt.Errorf("%w: %d bytes", errNATPortMessage, len(b))
	}
	m.kind = b[0]
	copy(m.nonce[:], b[1:1+natPortNonceLen])
	rest := b[1+natPortNonceLen:]
	switch m.kind {
	case natPortQuery:
		if len(rest) != 0 {
			return m, fmt.Errorf("%w: %d trailing bytes in a query", errNATPortMessage, len(rest))
		}
	case natPortAnswer:
		if len(rest) < 1 || int(rest[0]) != len(rest)-1 {
			return m, fmt.Errorf("%w: bad length of an answer", errNATPortMessage)
		}
		ap, err := netip.ParseAddrPort(string(rest[1:]))
		if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
			return m, fmt.Errorf("%w: bad endpoint in an answer", errNATPortMessage)
		}
		m.seen = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	default:
		return m, fmt.Errorf("%w: unknown kind %d", errNATPortMessage, m.kind)
	}
	return m, nil
}

// natPortVerdict is what one round of answers says.
type natPortVerdict int

const (
	natPortUnknown natPortVerdict = iota // too few answers: ask again
	natPortFound                         // the port below
	natPortVaries                        // different ports per peer: none to announce
)

// decideNATPort judges the endpoints the asked peers saw (seen) for a node
// whose public address is public, asked of asked peers. The port counts
// only where the answers agree: two at least, or the one answer when only
// one peer could be asked; answers of another address (a peer that sees
// the node elsewhere, behind the same NAT or through another) do not
// count. Peers that disagree say the NAT maps per destination (a symmetric
// NAT), where no port helps the others.
func decideNATPort(seen []netip.AddrPort, public netip.Addr, asked int) (natPortVerdict, uint16) {
	var ports []uint16
	for _, s := range seen {
		if s.Addr().Unmap() == public {
			ports = append(ports, s.Port())
		}
	}
	if len(ports) == 0 || len(ports) < min(2, asked) {
		return natPortUnknown, 0
	}
	for _, p := range ports[1:] {
		if p != ports[0] {
			return natPortVaries, 0
		}
	}
	return natPortFound, ports[0]
}

// natPorts is the daemon's side of the discovery: the questions in
// flight, the answers to them, and the limiter of its own answers. Safe
// for concurrent use.
type natPorts struct {
	mu      sync.Mutex
	pending map[[natPortNonceLen]byte]string // nonce -> the peer asked
	seen    []netip.AddrPort                 // answers of the current round
	asked   int                              // peers asked in the current round
	// decided is when the last verdict came; zero while there is none.
	decided time.Time
	// verdict and port are the last verdict (logged when it changes).
	verdict natPortVerdict
	port    uint16
	// answerAt is when the token bucket of answers was last refilled.
	answerAt time.Time
	tokens   float64
}

func newNATPorts() *natPorts {
	return &natPorts{pending: map[[natPortNonceLen]byte]string{}}
}

// natPortChannel is mesh.ChannelNATPort: messages only, no state.
type natPortChannel struct{ d *Daemon }

func (natPortChannel) LocalState(bool) []byte        { return nil }
func (natPortChannel) MergeRemoteState([]byte) error { return nil }

// HandleMessage queues a question for natPortAnswerLoop, which answers
// with the endpoint this node's data plane sees for the asker, or records
// an answer to a question of this node. It runs on memberlist's goroutine
// and never blocks.
func (c natPortChannel) HandleMessage(from string, msg []byte) error {
	m, err := decodeNATPortMsg(msg)
	if err != nil {
		return err
	}
	d := c.d
	switch m.kind {
	case natPortQuery:
		if !d.natPorts.allowAnswer(time.Now()) {
			return nil
		}
		select {
		case d.natPortQueries <- natPortQuestion{from: from, nonce: m.nonce}:
		default: // the answerer is behind: the asker asks again
		}
	case natPortAnswer:
		d.natPorts.record(from, m)
	}
	return nil
}

// allowAnswer takes a token of the answer bucket.
func (n *natPorts) allowAnswer(now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.answerAt.IsZero() {
		n.tokens += now.Sub(n.answerAt).Seconds() * natPortAnswersPerSecond
	} else {
		n.tokens = natPortAnswersPerSecond
	}
	n.tokens = min(n.tokens, natPortAnswersPerSecond)
	n.answerAt = now
	if n.tokens < 1 {
		return false
	}
	n.tokens--
	return true
}

// record keeps an answer to a question in flight, from the peer asked.
func (n *natPorts) record(from string, m natPortMsg) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if asked, ok := n.pending[m.nonce]; !ok || asked != from {
		return // not asked, asked of another, or answered already
	}
	delete(n.pending, m.nonce)
	n.seen = append(n.seen, m.seen)
}

// natPortQuestion is a question waiting for its answer.
type natPortQuestion struct {
	from  string
	nonce [natPortNonceLen]byte
}

// natPortAnswerLoop answers the questions HandleMessage queued, one at a
// time, until the daemon stops: memberlist's goroutine does not wait on
// the data plane.
func (d *Daemon) natPortAnswerLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-d.natPortQueries:
			d.answerNATPort(q.from, q.nonce)
		}
	}
}

// answerNATPort sends the asker the endpoint this node's data plane has
// for it, if a handshake with it is recent.
func (d *Daemon) answerNATPort(from string, nonce [natPortNonceLen]byte) {
	m, ok := d.members.Member(from)
	if !ok || m.MetaErr != nil {
		return
	}
	key, err := crypto.ParseKey(m.Meta.PublicKey)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, 5*time.Second)
	defer cancel()
	stats, err := d.dp.Stats(ctx)
	if err != nil {
		return
	}
	now := time.Now()
	for _, s := range stats {
		if s.PublicKey != key || !s.Endpoint.IsValid() || now.Sub(s.LastHandshake) > natPortFresh {
			continue
		}
		msg := natPortMsg{kind: natPortAnswer, nonce: nonce, seen: s.Endpoint}
		if err := d.natPortSender.SendTo(from, msg.encode()); err != nil {
			d.log.Debug("could not answer a NAT port question", "peer", from, "error", err)
		}
		return
	}
}

// natPortRound judges the answers of the last round and asks again when
// due. A node not behind NAT asks nothing and announces no port.
func (d *Daemon) natPortRound(ctx context.Context) {
	now := time.Now()
	r := d.members.Reachability()
	public, err := netip.ParseAddrPort(r.Observed)
	n := d.natPorts
	if !r.State.BehindNAT() || err != nil {
		n.mu.Lock()
		clear(n.pending)
		n.seen, n.asked, n.decided, n.verdict, n.port = nil, 0, time.Time{}, natPortUnknown, 0
		n.mu.Unlock()
		d.announceNATPort(0)
		return
	}
	n.mu.Lock()
	if n.asked > 0 {
		verdict, port := decideNATPort(n.seen, public.Addr().Unmap(), n.asked)
		if verdict != natPortUnknown {
			if verdict != n.verdict || port != n.port {
				logNATPort(d.log, verdict, port, d.cfg.DPPort, len(n.seen))
			}
			n.verdict, n.port, n.decided = verdict, port, now
		}
	}
	clear(n.pending)
	n.seen, n.asked = nil, 0
	due := n.decided.IsZero() || now.Sub(n.decided) >= natPortRecheck
	verdict, port := n.verdict, n.port
	n.mu.Unlock()
	announce := 0
	if verdict == natPortFound && int(port) != d.cfg.DPPort {
		announce = int(port)
	}
	d.announceNATPort(announce)
	if !due {
		return
	}
	peers := d.natPortCandidates(ctx, now)
	n.mu.Lock()
	n.asked = len(peers)
	var msgs [][]byte
	for _, p := range peers {
		var nonce [natPortNonceLen]byte
		_, _ = crand.Read(nonce[:])
		n.pending[nonce] = p
		msgs = append(msgs, natPortMsg{kind: natPortQuery, nonce: nonce}.encode())
	}
	n.mu.Unlock()
	for i, p := range peers {
		if err := d.natPortSender.SendTo(p, msgs[i]); err != nil {
			d.log.Debug("could not ask about this node's NAT port", "peer", p, "error", err)
		}
	}
}

func logNATPort(log *slog.Logger, verdict natPortVerdict, port uint16, dpPort, answers int) {
	switch {
	case verdict == natPortFound && int(port) == dpPort:
		log.Info("this node's NAT keeps its WireGuard port", "port", port, "answers", answers)
	case verdict == natPortFound:
		log.Info("this node's NAT maps its WireGuard port to another, the same for every peer: announcing it", "port", port, "wireguardPort", dpPort, "answers", answers)
	case verdict == natPortVaries:
		log.Warn("this node's NAT gives its WireGuard packets a different port per peer: the others reach its data plane where its own packets come from, and two such nodes are relayed", "answers", answers)
	}
}

// natPortCandidates are the peers to ask: live members not behind NAT
// themselves (they see this node's packets as they left its NAT), with a
// recent handshake with this node, at most natPortAsk of them, at random.
func (d *Daemon) natPortCandidates(ctx context.Context, now time.Time) []string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stats, err := d.dp.Stats(ctx)
	if err != nil {
		return nil
	}
	fresh := map[crypto.Key]bool{}
	for _, s := range stats {
		if now.Sub(s.LastHandshake) <= natPortFresh {
			fresh[s.PublicKey] = true
		}
	}
	var out []string
	for _, m := range d.members.Members() {
		if m.Self || !m.State.Live() || m.MetaErr != nil || m.Meta.Home != "" || m.Meta.PublicAddr != "" {
			continue
		}
		if key, err := crypto.ParseKey(m.Meta.PublicKey); err == nil && fresh[key] {
			out = append(out, m.Name)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out[:min(len(out), natPortAsk)]
}

// announceNATPort puts port (0: none) into this node's metadata when it
// changed.
func (d *Daemon) announceNATPort(port int) {
	d.announceMeta("this node's NAT port", func(m *mesh.Meta) bool {
		changed := m.PublicPort != port
		m.PublicPort = port
		return changed
	})
}

// status is the verdict for status: its state and the port announced.
func (n *natPorts) status(behindNAT bool, dpPort int) (api.NATPortState, int) {
	if !behindNAT {
		return "", 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.decided.IsZero():
		return api.NATPortAsking, 0
	case n.verdict == natPortVaries:
		return api.NATPortVaries, 0
	case int(n.port) == dpPort:
		return api.NATPortKept, 0
	default:
		return api.NATPortMapped, int(n.port)
	}
}
