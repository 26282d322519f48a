package ipam

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
)

// Bootstrap: the first split of the range is decided by single-decree Paxos
// among the peers that are up, needing a majority of InitialPeerCount. Two
// partitions cannot both gather a majority, so they cannot both seed; once a
// value is chosen every later proposer re-proposes it, so any peer that
// seeds computes the same ring. Messages ride the Transport; Tick retries.

type ballot struct {
	N    uint64 `json:"n"`
	Name string `json:"name"`
}

func compareBallot(a, b ballot) int {
	if c := cmp.Compare(a.N, b.N); c != 0 {
		return c
	}
	return cmp.Compare(a.Name, b.Name)
}

// proposal is a Paxos value: the members to split the range among.
type proposal struct {
	ID      uint64   `json:"id"`
	Members []string `json:"members"`
}

// paxosDurable is the acceptor's promise and vote, persisted before any
// reply so a restart cannot make it vote twice.
type paxosDurable struct {
	Promised ballot    `json:"promised"`
	Accepted ballot    `json:"accepted"`
	Value    *proposal `json:"value,omitempty"`
}

type paxos struct {
	durable  paxosDurable
	phase    int // 0 idle, 1 collecting promises, 2 collecting accepts
	ballot   ballot
	started  uint64
	maxSeen  uint64
	promises map[string]paxosDurable
	accepts  map[string]bool
	value    *proposal
}

func (a *Allocator) quorum() int { return a.cfg.InitialPeerCount/2 + 1 }

func seedID(name string, b ballot, members []string) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|%d|%s|%q", name, b.N, b.Name, members)
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1
}

// aliveNames is the sorted set of live members, this peer included.
func (a *Allocator) aliveNames() []string {
	var out []string
	for n, ok := range a.members {
		if ok {
			out = append(out, n)
		}
	}
	if !a.members[a.cfg.Self] {
		out = append(out, a.cfg.Self)
	}
	slices.Sort(out)
	return out
}

// paxosTickLocked starts or restarts a proposal. Peers wait in proportion to
// their rank among live names so that usually one proposes alone.
func (a *Allocator) paxosTickLocked() {
	if !a.st.seed.isZero() || a.cfg.InitialPeerCount <= 1 {
		return
	}
	alive := a.aliveNames()
	if len(alive) < a.quorum() {
		return
	}
	rank := uint64(slices.Index(alive, a.cfg.Self))
	wait := 1 + 3*rank
	if a.px.phase != 0 {
		wait = 8 + 3*rank // timeout of a proposal in flight
	}
	if a.tick < a.px.started+wait {
		return
	}
	p := &a.px
	p.phase, p.started = 1, a.tick
	p.ballot = ballot{N: max(p.maxSeen, p.durable.Promised.N) + 1, Name: a.cfg.Self}
	p.promises, p.accepts, p.value = map[string]paxosDurable{}, map[string]bool{}, nil
	msg := encodePaxos(msgPrepare, a.cfg.Self, p.ballot, paxosDurable{})
	a.outbox = append(a.outbox, outMsg{msg: msg})
	_ = a.handlePaxosLocked(msg) // we are an acceptor too
}

func (a *Allocator) handlePaxosLocked(msg []byte) error {
	typ, from, b, body, err := decodePaxos(msg)
	if err != nil {
		return fmt.Errorf("%w: paxos: %v", ErrCorruptState, err)
	}
	p := &a.px
	p.maxSeen = max(p.maxSeen, b.N)
	if !a.st.seed.isZero() {
		// Already decided: answer with the ring so the sender learns it.
		if from != a.cfg.Self && (typ == msgPrepare || typ == msgAccept) {
			a.outbox = append(a.outbox, outMsg{to: from, msg: a.stateMsgLocked()})
		}
		return nil
	}
	reply := func(m []byte) {
		if from == a.cfg.Self {
			_ = a.handlePaxosLocked(m)
		} else {
			a.outbox = append(a.outbox, outMsg{to: from, msg: m})
		}
	}
	switch typ {
	case msgPrepare:
		if compareBallot(b, p.durable.Promised) <= 0 {
			return nil
		}
		p.durable.Promised = b
		if err := a.saveLocked(); err != nil {
			return err
		}
		reply(encodePaxos(msgPromise, a.cfg.Self, b, p.durable))
	case msgPromise:
		if p.phase != 1 || b != p.ballot {
			return nil
		}
		p.promises[from] = body
		if len(p.promises) < a.quorum() {
			return nil
		}
		// The highest-ballot value already accepted anywhere in the quorum
		// must be kept: it may have been chosen.
		var best paxosDurable
		for _, n := range slices.Sorted(maps.Keys(p.promises)) {
			pr := p.promises[n]
			if pr.Value != nil && (best.Value == nil || compareBallot(pr.Accepted, best.Accepted) > 0) {
				best = pr
			}
		}
		p.value = best.Value
		if p.value == nil {
			members := a.aliveNames()
			p.value = &proposal{ID: seedID(a.cfg.Self, b, members), Members: members}
		}
		p.phase = 2
		m := encodePaxos(msgAccept, a.cfg.Self, b, paxosDurable{Value: p.value})
		a.outbox = append(a.outbox, outMsg{msg: m})
		_ = a.handlePaxosLocked(m)
	case msgAccept:
		if compareBallot(b, p.durable.Promised) < 0 || body.Value == nil {
			return nil
		}
		p.durable = paxosDurable{Promised: b, Accepted: b, Value: body.Value}
		if err := a.saveLocked(); err != nil {
			return err
		}
		reply(encodePaxos(msgAccepted, a.cfg.Self, b, paxosDurable{}))
	case msgAccepted:
		if p.phase != 2 || b != p.ballot {
			return nil
		}
		p.accepts[from] = true
		if len(p.accepts) >= a.quorum() {
			a.seedLocked(*p.value)
		}
	}
	return nil
}

// seedLocked installs the ring of a chosen proposal, persists it and tells
// everyone. Installing is a CRDT join, so doing it twice is harmless.
func (a *Allocator) seedLocked(v proposal) {
	if len(v.Members) == 0 {
		return
	}
	s := state{
		seed:  seed{Members: uint64(len(v.Members)), ID: v.ID},
		ring:  seededRing(a.st.ring.size, v.Members),
		peers: map[string]peerInfo{},
	}
	a.st = join(a.st, s)
	a.px.phase = 0
	a.log.Info("ring seeded", "seed", fmt.Sprintf("%x", v.ID), "members", v.Members)
	a.afterRingChangeLocked()
	a.publishLocked()
	if err := a.saveLocked(); err != nil {
		a.log.Error("could not persist the seeded ring", "err", err)
	}
	a.broadcastStateLocked()
}

func encodePaxos(typ byte, from string, b ballot, d paxosDurable) []byte {
	m := []byte{typ}
	m = appendString(m, from)
	m = appendUvarint(m, b.N)
	m = appendString(m, b.Name)
	m = appendUvarint(m, d.Accepted.N)
	m = appendString(m, d.Accepted.Name)
	if d.Value == nil {
		return append(m, 0)
	}
	m = append(m, 1)
	m = appendUvarint(m, d.Value.ID)
	m = appendUvarint(m, uint64(len(d.Value.Members)))
	for _, n := range d.Value.Members {
		m = appendString(m, n)
	}
	return m
}

func decodePaxos(msg []byte) (typ byte, from string, b ballot, d paxosDurable, err error) {
	dec := &decoder{b: msg[1:]}
	typ = msg[0]
	from = dec.str()
	b = ballot{N: dec.uvarint(), Name: dec.str()}
	d.Accepted = ballot{N: dec.uvarint(), Name: dec.str()}
	if has := dec.bytes(1); has != nil && has[0] == 1 {
		v := &proposal{ID: dec.uvarint()}
		n := dec.count(2)
		for i := 0; i < n && dec.err == nil; i++ {
			name := dec.str()
			if name == "" {
				dec.fail("empty member name")
			}
			v.Members = append(v.Members, name)
		}
		if dec.err == nil && (n == 0 || !slices.IsSorted(v.Members)) {
			dec.fail("members empty or unsorted")
		}
		d.Value = v
	}
	if dec.err == nil && (from == "" || b.Name == "") {
		dec.fail("missing sender or ballot")
	}
	return typ, from, b, d, dec.err
}
