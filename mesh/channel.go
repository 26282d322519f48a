package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/memberlist"
)

// Channel is state and messages that another part of the daemon replicates
// over the gossip layer, such as the IPAM ring. Its methods are called from
// memberlist's goroutines, concurrently with each other and with the
// channel's own users: implementations must be safe for concurrent use and
// must not block for long, as they hold up gossip.
type Channel interface {
	// LocalState returns what a push/pull exchange sends: the full state,
	// or what stands for it (a digest) when join is false. join is true
	// for the exchange of a node joining (memberlist's join), which must
	// get the whole state.
	LocalState(join bool) []byte
	// MergeRemoteState merges a peer's full state. Garbage must give an
	// error, never a panic.
	MergeRemoteState(buf []byte) error
	// HandleMessage handles a message sent by the named peer.
	HandleMessage(from string, msg []byte) error
}

// ChannelID names a channel on the wire. IDs are part of the protocol.
type ChannelID byte

const (
	channelControl ChannelID = 0 // membership's own messages
	// ChannelIPAM carries the IPAM ring and its requests.
	ChannelIPAM ChannelID = 1
	// ChannelIPAM6 carries the IPv6 ring of a dual-stack mesh, apart
	// from the IPv4 one: a node of the previous release drops messages of
	// this unknown channel and skips its part of a push/pull.
	ChannelIPAM6 ChannelID = 2
	// ChannelNATPort carries the questions of a node behind NAT about the
	// port its NAT gives its data plane, and their answers (the daemon's
	// natport.go); a node of the previous release drops them unread.
	ChannelNATPort ChannelID = 3
)

const controlBye = "bye"

// maxBroadcast is the largest message piggybacked on UDP gossip; larger
// ones go to each member over TCP.
const maxBroadcast = 1000

// Sender sends a channel's messages. Safe for concurrent use.
type Sender struct {
	m  *Membership
	id ChannelID
}

// Broadcast sends msg to every live member, best effort.
func (s Sender) Broadcast(msg []byte) {
	env := envelope(s.id, s.m.cfg.Name, msg)
	if len(env) <= maxBroadcast {
		s.m.channels.queue.QueueBroadcast(simpleBroadcast(env))
		return
	}
	// One TCP stream per member, broadcastParallel at a time: sent one
	// after the other, a state to a large mesh took as many round trips as
	// members (and a slow member held up all the rest), while the caller
	// (often memberlist's single packet handler) waited. Receivers join
	// states, so their order does not matter.
	sem := make(chan struct{}, broadcastParallel)
	var wg sync.WaitGroup
	for _, n := range s.m.list.Members() {
		if n.Name == s.m.cfg.Name {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := s.m.list.SendReliable(n, env); err != nil {
				s.m.log.Debug("failed to send broadcast", "peer", n.Name, "error", err)
			}
		}()
	}
	wg.Wait()
}

// broadcastParallel bounds the TCP streams one large Broadcast opens at
// once.
const broadcastParallel = 16

// SendTo sends msg to the named member over TCP.
func (s Sender) SendTo(peer string, msg []byte) error {
	for _, n := range s.m.list.Members() {
		if n.Name == peer {
			if err := s.m.list.SendReliable(n, envelope(s.id, s.m.cfg.Name, msg)); err != nil {
				return fmt.Errorf("failed to send to %q: %w", peer, err)
			}
			return nil
		}
	}
	return fmt.Errorf("failed to send to %q: not a live member", peer)
}

// Register attaches ch under id. It must be called before peers are joined
// for the channel to take part in the first state exchange.
func (m *Membership) Register(id ChannelID, ch Channel) (Sender, error) {
	if id == channelControl {
		return Sender{}, errors.New("channel 0 is reserved")
	}
	m.channels.mu.Lock()
	defer m.channels.mu.Unlock()
	if _, ok := m.channels.byID[id]; ok {
		return Sender{}, fmt.Errorf("channel %d is already registered", id)
	}
	m.channels.byID[id] = ch
	return Sender{m: m, id: id}, nil
}

type channels struct {
	mu    sync.RWMutex
	byID  map[ChannelID]Channel
	queue *memberlist.TransmitLimitedQueue
}

func (c *channels) init(m *Membership) {
	c.byID = make(map[ChannelID]Channel)
	c.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return m.list.NumMembers() },
		RetransmitMult: 3,
	}
}

func (c *channels) get(id ChannelID) Channel {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byID[id]
}

// envelope frames a message: channel, sender name length, sender, payload.
// memberlist does not tell the receiver who sent a message, so we do.
func envelope(id ChannelID, from string, msg []byte) []byte {
	b := make([]byte, 0, 2+len(from)+len(msg))
	b = append(b, byte(id), byte(len(from)))
	b = append(b, from...)
	return append(b, msg...)
}

func openEnvelope(b []byte) (ChannelID, string, []byte, error) {
	if len(b) < 2 || len(b) < 2+int(b[1]) {
		return 0, "", nil, errors.New("truncated message")
	}
	n := int(b[1])
	return ChannelID(b[0]), string(b[2 : 2+n]), b[2+n:], nil
}

type simpleBroadcast []byte

func (b simpleBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b simpleBroadcast) Message() []byte                       { return b }
func (b simpleBroadcast) Finished()                             {}

// delegate is memberlist's Delegate: metadata, messages and full state.
type delegate struct {
	m    *Membership
	mu   sync.Mutex
	meta []byte
}

func (d *delegate) setMeta(b []byte) {
	d.mu.Lock()
	d.meta = b
	d.mu.Unlock()
}

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		// Encode checks MetaLimit; this guards a smaller limit.
		return nil
	}
	return d.meta
}

func (d *delegate) NotifyMsg(b []byte) {
	id, from, msg, err := openEnvelope(b)
	if err != nil {
		d.m.log.Warn("dropped a malformed gossip message", "error", err)
		return
	}
	if id == channelControl {
		if string(msg) == controlBye {
			d.m.mu.Lock()
			if d.m.byeAllowedLocked(from) {
				d.m.byeFrom[from] = true
			}
			d.m.mu.Unlock()
		}
		return
	}
	ch := d.m.channels.get(id)
	if ch == nil {
		d.m.log.Debug("dropped a message for an unknown channel", "channel", id, "from", from)
		return
	}
	if err := ch.HandleMessage(from, msg); err != nil {
		d.m.log.Warn("failed to handle gossip message", "channel", id, "from", from, "error", err)
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.channels.queue.GetBroadcasts(overhead, limit)
}

// LocalState frames every channel's state as: id, uint32 length, bytes.
func (d *delegate) LocalState(join bool) []byte {
	d.m.channels.mu.RLock()
	defer d.m.channels.mu.RUnlock()
	var out []byte
	for id, ch := range d.m.channels.byID {
		st := ch.LocalState(join)
		out = append(out, byte(id))
		out = binary.BigEndian.AppendUint32(out, uint32(len(st)))
		out = append(out, st...)
	}
	return out
}

func (d *delegate) MergeRemoteState(buf []byte, _ bool) {
	for len(buf) > 0 {
		if len(buf) < 5 {
			d.m.log.Warn("dropped malformed remote state", "error", "truncated header")
			return
		}
		id, n := ChannelID(buf[0]), binary.BigEndian.Uint32(buf[1:5])
		buf = buf[5:]
		if uint64(n) > uint64(len(buf)) {
			d.m.log.Warn("dropped malformed remote state", "error", "truncated body")
			return
		}
		body := buf[:n]
		buf = buf[n:]
		if ch := d.m.channels.get(id); ch != nil {
			if err := ch.MergeRemoteState(body); err != nil {
				d.m.log.Warn("failed to merge remote state", "channel", id, "error", err)
			}
		}
	}
}
