package fastdp

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ProbeResult is what a Prober saw of one address.
type ProbeResult struct {
	// LastReply is when the last answer came; zero when none came yet.
	LastReply time.Time
	// RTT is the round trip of that answer.
	RTT time.Duration
}

// maxProbeTargets bounds what a Prober remembers; the caller probes one
// address per peer, and the mesh's member map is bounded far below this.
const maxProbeTargets = 4096

// echoProto is what differs between ICMP echo (IPv4) and ICMPv6 echo.
type echoProto struct {
	name           string // for errors
	is6            bool   // the family it probes
	network        string // for net.ListenIP
	request, reply byte   // the message types
	// checksum: the sender computes the checksum. For ICMPv6 the kernel
	// must: it covers a pseudo-header with the source address, which the
	// route chooses (Linux fills it in on every raw ICMPv6 socket, RFC
	// 3542 section 3.1).
	checksum bool
}

var (
	echo4 = echoProto{name: "ICMP", network: "ip4:icmp", request: 8, reply: 0, checksum: true}
	echo6 = echoProto{name: "ICMPv6", is6: true, network: "ip6:ipv6-icmp", request: 128, reply: 129}
)

// Prober sends ICMP echo requests to overlay addresses of one family and
// records the answers. Sent to a peer's overlay IP, they cross the direct
// WireGuard path to it (its host prefix stays on the peer's own entry), so
// an answer means that path works both ways. It knows addresses only;
// which peer an address is and what a missing answer means is package
// peer's.
type Prober struct {
	conn  *net.IPConn
	proto echoProto
	id    uint16
	token [8]byte // in every request: answers without it are not ours
	done  chan struct{}

	mu      sync.Mutex
	seq     uint16
	results map[netip.Addr]ProbeResult
}

// NewProber opens a raw ICMP socket (ICMPv6 with v6) in the calling
// thread's network namespace (CAP_NET_RAW) and starts reading answers. It
// probes addresses of that family only.
func NewProber(v6 bool) (*Prober, error) {
	proto := echo4
	if v6 {
		proto = echo6
	}
	conn, err := net.ListenIP(proto.network, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to open the path prober's %s socket: %w", proto.name, err)
	}
	if proto.is6 {
		// A raw ICMPv6 socket gets every ICMPv6 message, neighbour
		// discovery included; the kernel's filter passes echo
		// replies alone, so the reader wakes for answers only.
		if err := passOnly(conn, proto.reply); err != nil {
			conn.Close()
			return nil, fmt.Errorf("failed to filter the path prober's %s socket: %w", proto.name, err)
		}
	}
	p := &Prober{conn: conn, proto: proto, done: make(chan struct{}), results: map[netip.Addr]ProbeResult{}}
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("failed to make the path prober's token: %w", err)
	}
	p.id = binary.BigEndian.Uint16(b[:2])
	copy(p.token[:], b[2:])
	go p.read()
	return p, nil
}

// Probe sends one echo request to each of send and forgets the results of
// addresses not among targets (send is a subset of targets: the caller
// spreads its probes over rounds). Send errors (no route yet) count as no
// answer.
func (p *Prober) Probe(targets, send []netip.Addr) {
	keep := make(map[netip.Addr]bool, len(targets))
	for _, a := range targets {
		keep[a.Unmap()] = true
	}
	p.mu.Lock()
	for a := range p.results {
		if !keep[a] {
			delete(p.results, a)
		}
	}
	for a := range keep {
		if _, ok := p.results[a]; !ok && len(p.results) < maxProbeTargets {
			p.results[a] = ProbeResult{}
		}
	}
	p.mu.Unlock()
	for _, a := range send {
		a = a.Unmap()
		if !keep[a] || a.Is6() != p.proto.is6 {
			continue // the other family's: never answered
		}
		p.mu.Lock()
		p.seq++
		seq := p.seq
		p.mu.Unlock()
		msg := p.request(seq, time.Now())
		_ = p.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = p.conn.WriteToIP(msg, &net.IPAddr{IP: a.AsSlice()})
	}
}

// Results returns the results of the addresses last probed.
func (p *Prober) Results() map[netip.Addr]ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[netip.Addr]ProbeResult, len(p.results))
	for a, r := range p.results {
		out[a] = r
	}
	return out
}

// Close stops the prober.
func (p *Prober) Close() error {
	close(p.done)
	return p.conn.Close()
}

// request is an echo request carrying the send time and the token.
func (p *Prober) request(seq uint16, now time.Time) []byte {
	msg := make([]byte, 8+8+len(p.token))
	msg[0] = p.proto.request
	binary.BigEndian.PutUint16(msg[4:], p.id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	binary.BigEndian.PutUint64(msg[8:], uint64(now.UnixNano()))
	copy(msg[16:], p.token[:])
	if p.proto.checksum {
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
	}
	return msg
}

// sentAt is the send time an answer carries, if m is an echo reply to one
// of this prober's requests (its ID and token) with a sane round trip at
// now. The socket hands over the ICMP message without its IP header (Go
// strips IPv4's; IPv6 raw sockets never include it).
func (p *Prober) sentAt(m []byte, now time.Time) (time.Time, bool) {
	if len(m) < 16+len(p.token) || m[0] != p.proto.reply || m[1] != 0 ||
		binary.BigEndian.Uint16(m[4:]) != p.id || string(m[16:16+len(p.token)]) != string(p.token[:]) {
		return time.Time{}, false
	}
	sent := time.Unix(0, int64(binary.BigEndian.Uint64(m[8:])))
	if rtt := now.Sub(sent); rtt < 0 || rtt > time.Minute {
		return time.Time{}, false
	}
	return sent, true
}

func (p *Prober) read() {
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFromIP(buf)
		if err != nil {
			select {
			case <-p.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(100 * time.Millisecond) // a transient error; do not spin
			continue
		}
		now := time.Now()
		sent, ok := p.sentAt(buf[:n], now)
		if !ok {
			continue
		}
		rtt := now.Sub(sent)
		a, ok := netip.AddrFromSlice(from.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		p.mu.Lock()
		if _, ok := p.results[a]; ok {
			p.results[a] = ProbeResult{LastReply: now, RTT: rtt}
		}
		p.mu.Unlock()
	}
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return ^uint16(sum)
}
