package ipam

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Transport carries the Allocator's messages. The daemon implements it over
// memberlist; tests use a fake. Both methods are best effort: lost,
// duplicated and reordered messages are all tolerated. The Allocator never
// calls them while holding its lock, so they may block or call back in.
type Transport interface {
	// Broadcast sends msg to every peer. Messages may be several KB (a full
	// state), so the daemon should use a reliable/stream path for large ones.
	Broadcast(msg []byte)
	// SendTo sends msg to one peer by name.
	SendTo(peer string, msg []byte) error
}

// Key identifies an allocation: one interface of one container.
type Key struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// HostIDPrefix begins the container ID of an address the node holds for
// itself (its end-to-end address, docs/routing.md), not for a container:
// CNI container IDs hold letters, digits, "_", "." and "-" only, never a
// colon. Such an allocation is held and persisted like a pod's, but List
// and Status leave it out (they describe the pods), no garbage collection
// frees it, and Release refuses it.
const HostIDPrefix = "mesh:"

// Host says whether k is one of the node's own allocations (HostIDPrefix).
func (k Key) Host() bool { return strings.HasPrefix(k.ContainerID, HostIDPrefix) }

// ErrHostKey is returned by Release for a key of the node's own
// (Key.Host).
var ErrHostKey = errors.New("ipam: the address is held by the node itself, not by a container")

// Allocation is an address held by a container interface.
type Allocation struct {
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifName"`
	Addr        netip.Addr `json:"addr"`
	// Network is the CNI network the address was allocated for; empty when
	// unknown (an older plugin, or a state file written before it was
	// recorded). See ReleaseAllExceptIn.
	Network string `json:"network,omitempty"`
}

// Allocator owns this peer's view of the ring and its allocations.
//
// All methods are safe for concurrent use. Only Allocate blocks (until space
// arrives, bounded by its context); the others take the lock briefly, may
// write the state file (an fsync) and send through the Transport after
// releasing the lock.
type Allocator struct {
	cfg    Config
	tr     Transport
	store  stateStore
	log    *slog.Logger
	selfID string

	mu     sync.Mutex
	closed bool
	st     state
	// allocs, byOff and offs index the allocations three ways; they
	// change together, through bindLocked, unbindLocked and
	// reindexLocked. offs is byOff's keys sorted, kept so that the listing
	// and the Held list that every allocation writes need no sort.
	allocs  map[Key]uint64
	byOff   map[uint64]Key
	offs    []uint64
	nets    map[Key]string  // CNI network of an allocation, when known
	members map[string]bool // alive, per the daemon
	tick    uint64

	// changed is closed and replaced whenever something that could unblock
	// Allocate happens.
	changed chan struct{}
	subs    []chan struct{}
	waiting int // Allocate calls blocked for space

	// reservedSorted is every offset other peers publish as held, sorted
	// and without repeats; stale unless reservedValid. A sorted slice, not
	// a set: 8 bytes an address where a map took about 40, and a node of
	// a large cluster holds every pod's address here (docs/scale.md).
	reservedSorted []uint64
	reservedValid  bool
	lastAsk        uint64            // tick of the last space request
	gwEchoAsked    uint64            // gateway version promptLocked asked echoes for
	heldAsks       map[string]uint64 // requester not yet live -> tick asked (holdAskLocked)
	problems       map[string]string // key -> operator-facing message
	// stateSizeLevel is the state-size problem's level last logged:
	// 0 none, 1 near MaxStateBytes, 2 past it (noteStateSizeLocked).
	stateSizeLevel int
	stateBytes     int // size of the whole state last encoded for sending
	// Scratch reused by saveLocked; its encoding buffer is saveBufs'.
	saveList []Allocation
	// journal records allocations and releases between state file writes
	// (journal.go).
	journal journal

	liveness liveness
	guard    guard             // refused input, see validate.go
	pool     map[uint64]uint64 // lease pool: offset -> info version that published it
	// pubVersion is the highest version of our info we published. A
	// removal (rmpeer) replaces our info by one of a higher epoch but
	// possibly a lower version; our versions must still only grow, since
	// lease echoes and liveness compare versions.
	pubVersion uint64
	// versionCeil is the version floor recorded in the state file: every
	// version published so far is below it. Crossing it moves it up by
	// versionStep and writes the file (once per versionStep of clock).
	versionCeil uint64
	gw          gateway
	px          paxos
	outbox      []outMsg

	// signedWire says this peer sends states with signatures (MIP3,
	// MIP7): set once every member reads them, and persisted.
	signedWire bool
	// listsOwned says this peer lists its space in its infos: set at
	// the first info that does, and from then on for good (the state file
	// keeps it in this peer's info; here it also outlives a removal of
	// this peer by another, whose info lists nothing).
	listsOwned bool
	// listsAcks says this peer lists the tombstones it holds in its
	// infos, as listsOwned; acks is what it knows of the others'
	// (tombstone.go).
	listsAcks bool
	// listsVouches says this peer lists its vouches in its infos
	// (vouch.go), for good once set.
	listsVouches bool
	// vouchIdle: vouched peer -> the tick from which nothing needed this
	// peer's vouch for it (ownVouchesLocked); at most maxVouches.
	vouchIdle map[string]uint64
	acks      ackBook

	// dirty says the state holds something learnt or decided that is not
	// in the state file yet. It is written before anything is sent
	// (takeOutbox, LocalState) or acted on (I4 in docs/ipam.md).
	dirty bool
	// recovering is set when New loaded a state file: until this peer has
	// merged full states from a lease quorum of voters it sends no state of
	// its own (so nobody counts it as an echo), does not answer echoes,
	// and neither reclaims nor donates (I6 in docs/ipam.md).
	recovering    bool
	recoveredFrom map[string]bool
	// deltaForwards counts the deltas passed on since the last tick
	// (deltaForwardsPerTick).
	deltaForwards int
	// digestAnswered are the peers sent a whole state for a digest since
	// the last tick (mergeDigestLocked); cleared at every tick.
	digestAnswered map[string]bool
}

type outMsg struct {
	to  string // "" = broadcast
	msg []byte
	// recovery marks the messages a recovering peer may send: its empty
	// echo requests and answers to them. Other states wait (I6).
	recovery bool
	// alt are the peers to try, in order, when sending to `to` fails: a
	// space request goes on to the next donor at once, rather than after
	// askEvery ticks (a donor that just stopped is still a member until
	// gossip notices).
	alt []string
}

// gateway is the node's own overlay address (its pods' default gateway).
// It is chosen once, when the peer first owns usable space, persisted,
// published in Held and never given to a pod; it does not follow later
// changes of the ring, so the pods' gateway never moves under them.
type gateway struct {
	set bool
	off uint64
	// echoed: with automatic reclaim, a lease quorum has echoed it as held
	// (a new gateway is used only then, like a leased address). Persisted,
	// so a restart reports it at once.
	echoed bool
	// version is the version of our info that first published it; 0 until
	// published (in memory only: after a restart an unechoed gateway is
	// echoed again).
	version uint64
	// durable says the state file records it.
	durable bool
}

// New loads the state file (a missing file is a fresh start) and returns an
// Allocator. It does not block on the network and sends nothing; feed it
// membership and call Tick to make progress. A peer with InitialPeerCount 1
// seeds the ring alone here. The Allocator is safe for concurrent use.
func New(cfg Config, tr Transport) (*Allocator, error) {
	return newAllocator(cfg, tr, diskStore{})
}

func newAllocator(cfg Config, tr Transport, store stateStore) (*Allocator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Allocator{
		cfg:      cfg,
		tr:       tr,
		store:    store,
		log:      cfg.Logger.With("component", "ipam"),
		selfID:   cfg.SelfID,
		st:       newState(rangeSize(cfg.Range)),
		allocs:   map[Key]uint64{},
		byOff:    map[uint64]Key{},
		nets:     map[Key]string{},
		members:  map[string]bool{cfg.Self: true},
		changed:  make(chan struct{}),
		problems: map[string]string{},

		digestAnswered: map[string]bool{},
	}
	a.liveness.init()
	oldFile := false // a state file of the previous release (no gateway)
	if cfg.StateFile != "" {
		a.journal.path = journalPath(cfg.StateFile)
		l, ok, err := loadFile(store, cfg.StateFile, cfg)
		if err != nil {
			return nil, err
		}
		if l.tornJournal {
			a.log.Warn("journal ended in a torn record (a crash while it was written): dropped; its change was never acknowledged", "file", a.journal.path)
		}
		if ok {
			a.st = l.st
			a.px.durable = l.paxos
			if l.gw.set {
				a.gw = gateway{set: true, off: l.gw.off, echoed: l.gw.echoed || cfg.ReclaimAfter <= 0, durable: true}
			}
			oldFile = !l.gw.set
			a.pubVersion, a.versionCeil = l.floor, l.floor
			a.signedWire = l.signed && cfg.Identities != nil
			// What this peer knew may be older than what it told others
			// (a state file of an earlier release did not record what it
			// learnt): it neither echoes nor votes until it has heard
			// from a lease quorum again (I6).
			a.recovering = !l.st.seed.isZero()
			if a.selfID == "" {
				a.selfID = l.selfID
			} else if l.selfID != "" && l.selfID != a.selfID {
				a.log.Warn("peer ID changed since the state file was written", "old", l.selfID, "new", a.selfID)
			}
			for _, al := range l.allocs {
				off, _ := addrOffset(cfg.Range, al.Addr)
				k := Key{al.ContainerID, al.IfName}
				a.bindLocked(k, off)
				if al.Network != "" {
					a.nets[k] = al.Network
				}
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st.seed.isZero() && cfg.InitialPeerCount <= 1 {
		a.seedLocked(proposal{Members: []string{cfg.Self}, ID: seedID(cfg.Self, ballot{}, nil)})
	}
	a.recoveredFrom = map[string]bool{}
	a.checkRecoveredLocked()
	if oldFile {
		// A state file of the previous release: it computed the gateway
		// as we choose it now and published it in Held before using it.
		// If our recorded Held has it, the bridge already carries it:
		// keep using it rather than take it off the bridge for the
		// echo round an upgrade restart would otherwise cost.
		if off, ok := a.firstUsableOwned(); ok {
			if _, held := slices.BinarySearch(a.st.peers[cfg.Self].Held, off); held {
				a.gw = gateway{set: true, off: off, echoed: true}
				a.dirty = true
			}
		}
	}
	a.publishLocked()
	if err := a.saveLocked(); err != nil {
		return nil, err
	}
	a.outbox = nil // nothing to tell anyone before the daemon is wired up
	return a, nil
}

// usable says whether an offset may be given to a pod (usableOffset: not
// the IPv4 network or broadcast address, not the IPv6 subnet-router
// anycast address).
func (a *Allocator) usable(off uint64) bool { return usableOffset(a.cfg.Range, off) }

// gatewayOff is this node's gateway (overlay address), if chosen.
func (a *Allocator) gatewayOff() (uint64, bool) { return a.gw.off, a.gw.set }

// chooseGatewayLocked picks the gateway the first time the peer owns usable
// space, and never again: later ring changes (a lower donated range, an
// inherited one, the loss of the range that contains it) do not move it.
//
// The one exception: a node without pods whose gateway lies in space it no
// longer owns (it lost a seeding clash, or was removed while alive) gives
// it up, and takes a new one in space it owns (at once, or when space
// arrives): no pod can lose its gateway then, and the old address may be
// the new owner's gateway or a pod's.
func (a *Allocator) chooseGatewayLocked() {
	if a.gw.set && len(a.byOff) == 0 {
		if e := a.st.ring.get(a.gw.off); e.Owner != a.cfg.Self || e.Dead != "" {
			a.log.Info("gateway outside owned space and no pods: giving it up", "old", offsetAddr(a.cfg.Range, a.gw.off))
			a.gw = gateway{}
			a.dirty = true
			a.ringChangedLocked() // the data plane takes it off the bridge
		}
	}
	if a.gw.set {
		return
	}
	if off, ok := a.firstUsableOwned(); ok {
		a.gw = gateway{set: true, off: off, echoed: a.cfg.ReclaimAfter <= 0}
		a.dirty = true
		a.log.Info("chose gateway", "addr", offsetAddr(a.cfg.Range, off))
	}
}

// firstUsableOwned is the first usable address of the lowest range this
// peer owns that no pod holds (a pod of another peer in space that changed
// hands under it, or one of ours).
func (a *Allocator) firstUsableOwned() (uint64, bool) {
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		for off := sp.start; off < sp.end; off++ {
			_, mine := a.byOff[off]
			if a.usable(off) && !mine && !a.isReserved(off) {
				return off, true
			}
		}
	}
	return 0, false
}

// reserved returns the offsets other peers publish as held, sorted and
// without repeats. Cached until another peer's info changes
// (staleReservedLocked); the caller must not modify it.
func (a *Allocator) reserved() []uint64 {
	if !a.reservedValid {
		// A removed peer's Held reserves too: rmpeer empties it, a Node
		// deletion keeps the last known one (I5). A new slice each time:
		// a caller may still hold the previous one.
		n := 0
		for name, p := range a.st.peers {
			if name != a.cfg.Self {
				n += len(p.Held)
			}
		}
		r := make([]uint64, 0, n)
		for name, p := range a.st.peers {
			if name != a.cfg.Self {
				r = append(r, p.Held...)
			}
		}
		slices.Sort(r)
		a.reservedSorted, a.reservedValid = slices.Compact(r), true
	}
	return a.reservedSorted
}

// isReserved says whether another peer publishes off as held.
func (a *Allocator) isReserved(off uint64) bool {
	_, ok := slices.BinarySearch(a.reserved(), off)
	return ok
}

// staleReservedLocked drops the cache of reserved: another peer's info
// changed.
func (a *Allocator) staleReservedLocked() { a.reservedValid = false }

// blocked says whether an owned offset cannot be allocated.
func (a *Allocator) blocked(off uint64, gw uint64, hasGw bool) bool {
	if !a.usable(off) || (hasGw && off == gw) {
		return true
	}
	if _, ok := a.byOff[off]; ok {
		return true
	}
	return a.isReserved(off)
}

// pickFree returns the lowest allocatable offset. Without automatic
// reclaim the walk stops at the first address that is not blocked, and
// blocked addresses are few (allocations and reservations), so it is short
// even on the 2^48 addresses of an IPv6 ring. With automatic reclaim only
// lease pool addresses pass leaseAllows, so the candidates are the pool
// (at most poolSize), lowest first: the same answer as the walk, which
// would visit every owned address before giving up.
func (a *Allocator) pickFree() (uint64, bool) {
	ov, hasOv := a.gatewayOff()
	if a.cfg.ReclaimAfter > 0 {
		for _, off := range slices.Sorted(maps.Keys(a.pool)) {
			if e := a.st.ring.get(off); a.ownsPlain(e) && !a.blocked(off, ov, hasOv) && a.leaseAllows(off) {
				return off, true
			}
		}
		return 0, false
	}
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		for off := sp.start; off < sp.end; off++ {
			if !a.blocked(off, ov, hasOv) && a.leaseAllows(off) {
				return off, true
			}
		}
	}
	return 0, false
}

// freeCount counts allocatable owned offsets without walking them all: the
// owned sizes minus what is blocked inside them, looked up in the (few)
// allocations and sorted reservations.
func (a *Allocator) freeCount() uint64 {
	ov, hasOv := a.gatewayOff()
	res := a.reserved()
	var total, blocked uint64
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		total += sp.len()
		i, _ := slices.BinarySearch(res, sp.start)
		for ; i < len(res) && res[i] < sp.end; i++ {
			if off := res[i]; a.usable(off) && !(hasOv && off == ov) {
				if _, mine := a.byOff[off]; !mine {
					blocked++
				}
			}
		}
		if !a.usable(sp.start) {
			blocked++
		}
		if sp.end-1 != sp.start && !a.usable(sp.end-1) {
			blocked++
		}
	}
	if e := a.st.ring.get(ov); hasOv && a.ownsPlain(e) && a.usable(ov) {
		blocked++ // the gateway lies in space we own
	}
	for off := range a.byOff {
		e := a.st.ring.get(off)
		if a.ownsPlain(e) && a.usable(off) && !(hasOv && off == ov) {
			blocked++
		}
	}
	if blocked > total {
		return 0
	}
	return total - blocked
}

// Allocate returns the address of (containerID, ifName), allocating one if
// it has none; asking again returns the same address. It is recorded in the
// state file before it is returned.
//
// When this peer has no free address it asks the reachable peer with the
// most and blocks until space arrives or ctx ends (ErrNotReady). It fails at
// once with ErrNoSpace when the ring is seeded and no reachable peer has any
// space. Safe for concurrent use.
func (a *Allocator) Allocate(ctx context.Context, containerID, ifName string) (netip.Addr, error) {
	return a.AllocateIn(ctx, "", containerID, ifName)
}

// AllocateIn is Allocate recording network, the CNI network the address is
// for, with a new allocation, so that a GC of another network leaves it
// alone (ReleaseAllExceptIn). An existing allocation keeps the network it
// was recorded with.
func (a *Allocator) AllocateIn(ctx context.Context, network, containerID, ifName string) (netip.Addr, error) {
	if containerID == "" {
		return netip.Addr{}, fmt.Errorf("ipam: empty container ID")
	}
	k := Key{containerID, ifName}
	for {
		a.mu.Lock()
		addr, wait, err := a.tryAllocateLocked(k, network)
		out := a.takeOutbox()
		a.mu.Unlock()
		a.flush(out)
		if err != nil || addr.IsValid() {
			return addr, err
		}
		select {
		case <-ctx.Done():
			a.mu.Lock()
			a.waiting--
			st := a.statusWordLocked()
			a.mu.Unlock()
			return netip.Addr{}, fmt.Errorf("%w for %s/%s (ipam status %q): %w", ErrNotReady, containerID, ifName, st, ctx.Err())
		case <-wait:
			a.mu.Lock()
			a.waiting--
			a.mu.Unlock()
		}
	}
}

// tryAllocateLocked returns an address, or a channel to wait on, or an
// error. When it returns a channel it has counted the caller in a.waiting.
func (a *Allocator) tryAllocateLocked(k Key, network string) (netip.Addr, <-chan struct{}, error) {
	if a.closed {
		return netip.Addr{}, nil, ErrClosed
	}
	if off, ok := a.allocs[k]; ok {
		return offsetAddr(a.cfg.Range, off), nil, nil
	}
	if off, ok := a.pickFree(); ok {
		a.bindLocked(k, off)
		if network != "" {
			a.nets[k] = network
		}
		a.publishLocked()
		if err := a.recordLocked(journalAdd, k, off, network); err != nil {
			a.unbindLocked(k, off)
			delete(a.nets, k)
			a.publishLocked()
			return netip.Addr{}, nil, fmt.Errorf("ipam: allocation for %s/%s not recorded: %w", k.ContainerID, k.IfName, err)
		}
		return offsetAddr(a.cfg.Range, off), nil, nil
	}
	if !a.st.seed.isZero() && a.freeCount() == 0 && !a.leaseRefillPending() {
		// Fail at once only when nobody is reachable; reachable peers may
		// just not have told us of their free space yet, so wait for
		// their answer to askForSpaceLocked's echo request (bounded by the
		// caller's context).
		if _, ok := a.bestDonor(); !ok && len(a.reachableOthersLocked()) == 0 {
			return netip.Addr{}, nil, fmt.Errorf("%w (range %s, %d peers known)", ErrNoSpace, a.cfg.Range, len(a.st.peers))
		}
	}
	a.waiting++
	if a.needsSpaceLocked() {
		a.askForSpaceLocked()
	}
	return netip.Addr{}, a.changed, nil
}

// Release frees the address of (containerID, ifName). Releasing an unknown
// key is not an error (CNI DEL is retried). It blocks for the state file
// write (an fsync); on a write error the address stays allocated. Safe for
// concurrent use.
func (a *Allocator) Release(containerID, ifName string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	k := Key{containerID, ifName}
	off, ok := a.allocs[k]
	if !ok {
		return nil
	}
	if k.Host() {
		return fmt.Errorf("%w: %s/%s", ErrHostKey, containerID, ifName)
	}
	network, hadNet := a.nets[k]
	a.unbindLocked(k, off)
	delete(a.nets, k)
	a.publishLocked()
	if err := a.recordLocked(journalDel, k, off, network); err != nil {
		// Keep it allocated: better leak an address than reuse a live one.
		a.bindLocked(k, off)
		if hadNet {
			a.nets[k] = network
		}
		a.publishLocked()
		return fmt.Errorf("ipam: release of %s/%s not recorded: %w", containerID, ifName, err)
	}
	a.wakeLocked()
	return nil
}

// ReleaseAllExcept frees every allocation whose key is not in valid, of
// any network, and returns how many it freed. One state file write for the
// lot; on error nothing is freed. Safe for concurrent use.
func (a *Allocator) ReleaseAllExcept(valid []Key) (int, error) {
	return a.releaseAllExcept(func(Key) bool { return true }, valid)
}

// ReleaseAllExceptIn is CNI GC for one network: it frees every allocation
// recorded for network whose key is not in valid. Allocations of other
// networks, and those whose network is unknown (empty), are never freed
// here: the caller's list says nothing about them, and freeing a live
// pod's address is worse than leaking one (DEL still frees them). An empty
// network frees nothing. One state file write; on error nothing is freed.
func (a *Allocator) ReleaseAllExceptIn(network string, valid []Key) (int, error) {
	if network == "" {
		return 0, nil
	}
	return a.releaseAllExcept(func(k Key) bool { return a.nets[k] == network }, valid)
}

// releaseAllExcept frees the allocations that match (called under a.mu)
// and are not in valid.
func (a *Allocator) releaseAllExcept(match func(Key) bool, valid []Key) (int, error) {
	keep := make(map[Key]bool, len(valid))
	for _, k := range valid {
		keep[k] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return 0, ErrClosed
	}
	old, oldNets := maps.Clone(a.allocs), maps.Clone(a.nets)
	released := 0
	for k := range a.allocs {
		if !keep[k] && match(k) && !k.Host() {
			delete(a.allocs, k)
			delete(a.nets, k)
			released++
		}
	}
	if released == 0 {
		return 0, nil
	}
	a.reindexLocked()
	a.publishLocked()
	if err := a.saveLocked(); err != nil {
		a.allocs, a.nets = old, oldNets
		a.reindexLocked()
		a.publishLocked()
		return 0, fmt.Errorf("ipam: garbage collection not recorded: %w", err)
	}
	a.wakeLocked()
	return released, nil
}

// List returns this peer's allocations for containers sorted by address
// (not the node's own, Key.Host). Non-blocking; safe for concurrent use.
func (a *Allocator) List() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.appendListLocked(make([]Allocation, 0, len(a.allocs)))
	return slices.DeleteFunc(l, func(al Allocation) bool { return Key{al.ContainerID, al.IfName}.Host() })
}

// hostAllocsLocked counts the node's own allocations (Key.Host).
func (a *Allocator) hostAllocsLocked() int {
	n := 0
	for k := range a.allocs {
		if k.Host() {
			n++
		}
	}
	return n
}

// appendListLocked appends the allocations to dst sorted by address. It
// runs at every allocation (the state file, the isolation tables): it
// walks the sorted offsets instead of sorting, and allocates only what dst
// needs, as the garbage of each call added to what a flood of IPAM states
// makes the collector sweep.
func (a *Allocator) appendListLocked(dst []Allocation) []Allocation {
	for _, off := range a.offs { // offsets order as the addresses do
		k := a.byOff[off]
		dst = append(dst, Allocation{ContainerID: k.ContainerID, IfName: k.IfName, Addr: offsetAddr(a.cfg.Range, off), Network: a.nets[k]})
	}
	return dst
}

// bindLocked records k's allocation at off in every index.
func (a *Allocator) bindLocked(k Key, off uint64) {
	a.allocs[k], a.byOff[off] = off, k
	if i, found := slices.BinarySearch(a.offs, off); !found {
		a.offs = slices.Insert(a.offs, i, off)
	}
}

// unbindLocked removes k's allocation at off from every index.
func (a *Allocator) unbindLocked(k Key, off uint64) {
	delete(a.allocs, k)
	delete(a.byOff, off)
	if i, found := slices.BinarySearch(a.offs, off); found {
		a.offs = slices.Delete(a.offs, i, i+1)
	}
}

// reindexLocked rebuilds byOff and offs from allocs, after a change of
// many allocations at once.
func (a *Allocator) reindexLocked() {
	a.byOff = make(map[uint64]Key, len(a.allocs))
	a.offs = a.offs[:0]
	for k, off := range a.allocs {
		a.byOff[off] = k
		a.offs = append(a.offs, off)
	}
	slices.Sort(a.offs)
}

// OverlayIP returns this node's gateway: the first usable address of the
// first range it owned, chosen once and kept (reserved for the host, never
// given to a pod), and false until it has one. Non-blocking.
func (a *Allocator) OverlayIP() (netip.Addr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.gatewayUsableLocked() {
		return netip.Addr{}, false
	}
	return offsetAddr(a.cfg.Range, a.gw.off), true
}

// gwAwaitingEchoLocked says whether the gateway is published and waits
// for a lease quorum's echo before use.
func (a *Allocator) gwAwaitingEchoLocked() bool {
	return a.gw.set && !a.gw.echoed && a.gw.version != 0
}

// gatewayUsableLocked says whether the gateway may go on the bridge: it is
// recorded in the state file and, with automatic reclaim (this peer may be
// declared dead while merely cut off), a lease quorum has echoed it as held,
// like a leased address (docs/ipam.md). Once echoed it stays usable, also
// across restarts.
func (a *Allocator) gatewayUsableLocked() bool {
	if !a.gw.set || !a.gw.durable {
		return false
	}
	if !a.gw.echoed {
		if a.gw.version == 0 || a.gw.version > a.echoedVersionLocked() {
			return false
		}
		a.gw.echoed = true
		a.dirty = true        // soft: losing it only delays the gateway after a crash
		a.ringChangedLocked() // the data plane can put it on the bridge now
	}
	return true
}

// Subscribe returns a channel that receives a value (coalesced, never
// blocking the Allocator) whenever the ring changes. Non-blocking.
func (a *Allocator) Subscribe() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan struct{}, 1)
	a.subs = append(a.subs, ch)
	return ch
}

// Close stops the Allocator: blocked Allocate calls return ErrClosed and
// later calls fail. It writes the state file if anything learnt since the
// last write is not in it yet. Idempotent.
func (a *Allocator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	a.wakeLocked()
	if a.dirty || a.journal.named != 0 {
		// The state file alone, without a journal: what a release that
		// reads no journal loads (format 1 or 2).
		if err := a.writeFileLocked(false); err != nil {
			return fmt.Errorf("ipam: saving state on close: %w", err)
		}
		if a.cfg.StateFile != "" {
			if err := a.store.remove(a.journal.path); err != nil {
				return fmt.Errorf("ipam: removing journal on close: %w", err)
			}
		}
	}
	return nil
}

// wakeLocked unblocks every Allocate waiting for a change.
func (a *Allocator) wakeLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *Allocator) ringChangedLocked() {
	a.wakeLocked()
	for _, ch := range a.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// publishLocked refreshes what this peer says about itself, with a new
// version. The version is at least the clock in milliseconds so it keeps
// growing across restarts even though it is not persisted at every
// publication. The epoch is the one in our view: after an rmpeer of this
// (live) peer, that of the removal, which our new info then beats by its
// version.
func (a *Allocator) publishLocked() { a.publishInfoLocked(true) }

// heartbeatLocked is the publication of a tick or a merge. With automatic
// reclaim on, the version grows at every one: it is the heartbeat by which
// the others tell this peer is alive (reclaimLocked). With it off nothing
// reads heartbeats (only Leased peers are ever reclaimed), so the info is
// published again only when it would say something new, or when the state
// holds an info of this peer written by another (a removal by rmpeer, an
// unsigned info relayed during an upgrade), which it must beat.
// A mesh at rest then holds the same infos everywhere: a merge of another
// peer's state verifies no signature and changes nothing
// (TestHeartbeatOnlyWithReclaim).
func (a *Allocator) heartbeatLocked() { a.publishInfoLocked(a.cfg.ReclaimAfter > 0) }

// publishInfoLocked publishes this peer's info; with bump false, only if
// it would change beyond its version (see heartbeatLocked).
func (a *Allocator) publishInfoLocked(bump bool) {
	me := a.st.peers[a.cfg.Self]
	held := slices.Clone(a.offs)
	held = a.leaseHeld(held)
	version := max(me.Version+1, a.pubVersion+1, uint64(a.cfg.Now().UnixMilli()))
	// The gateway is held like a pod's address: whoever comes to own this
	// space (a reclaim's heir, the winner of a seeding clash) must not hand
	// the node's own bridge address to a pod.
	a.chooseGatewayLocked()
	if a.gw.set {
		held = append(held, a.gw.off)
		slices.Sort(held)
		held = slices.Compact(held)
	}
	// A peer removed while alive comes back as a new one: it votes again
	// only once everyone holds its new info, as a joiner does.
	joining := me.Joining || me.Removed && a.joinsLocked()
	next := peerInfo{
		Epoch:   me.Epoch,
		Version: version,
		ID:      a.selfID,
		Leased:  a.cfg.ReclaimAfter > 0,
		Joining: joining,
		Held:    held,
	}
	if a.listsOwnedLocked(me) {
		next.ListsOwned, next.Owned = true, a.st.ring.owned(a.cfg.Self)
	}
	if a.listsAcksLocked(me) {
		next.ListsAcks, next.Acks = true, a.ownAcksLocked(me)
	}
	if a.listsVouchesLocked(me) {
		next.ListsVouches, next.Vouches = true, a.ownVouchesLocked(me)
	}
	a.st.peers[a.cfg.Self] = next
	// Free depends on the ring and reservations, not on the version.
	next.Free = a.donatableFree()
	// next is never Removed, so an equal content is no removal either.
	if !bump && me.Writer == a.writerLocked() && me.Free == next.Free && sameContent(me, next) {
		a.st.peers[a.cfg.Self] = me
		return
	}
	if a.gw.set && a.gw.version == 0 {
		a.gw.version = version
	}
	a.st.peers[a.cfg.Self] = a.signLocked(a.cfg.Self, next)
	if next.ListsOwned && !me.ListsOwned {
		// The first info that lists this peer's space (or the first
		// after a removal) goes to every member at once: until they
		// hold it, they take a forged transfer of that space. Later
		// infos travel as any, by push/pull.
		a.broadcastStateLocked()
	}
	a.pubVersion = next.Version
	if a.pubVersion >= a.versionCeil {
		a.versionCeil = a.pubVersion + versionStep
		a.dirty = true // written before this version is sent (takeOutbox)
	}
}

// listsOwnedLocked says whether this peer's next info lists the space it
// owns (listSwitchLocked).
func (a *Allocator) listsOwnedLocked(me peerInfo) bool {
	return a.listSwitchLocked(&a.listsOwned, me.ListsOwned, a.cfg.ListOwned, "owned spans: listing this peer's space in its infos")
}

// listSwitchLocked says whether this peer's next info carries a list that
// earlier releases cannot read: once it has (for good: on is set, and the
// flag is in its own info, listed, which the state file keeps), or once
// gate says every member reads the list and, with Identities, this peer
// sends signed states (a list protects only what a signature covers).
func (a *Allocator) listSwitchLocked(on *bool, listed bool, gate func() bool, what string) bool {
	if *on || listed {
		*on = true
		return true
	}
	if gate == nil || a.cfg.Identities != nil && !a.signedWire || !gate() {
		return false
	}
	a.log.Info("every member reads " + what + " from now on")
	*on = true
	return true
}

// ListsOwned says whether this peer's info lists the space it owns
// (status). Non-blocking; safe for concurrent use.
func (a *Allocator) ListsOwned() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.peers[a.cfg.Self].ListsOwned
}

// ownsPlain says whether e is this peer's as a plain owner (plainOf).
func (a *Allocator) ownsPlain(e entry) bool { return e.plainOf(a.cfg.Self) }

// versionStep is how far ahead of the published versions the state file's
// floor is kept: one minute of the millisecond clock, so the floor costs
// one write per minute. A restart starts at the floor, so each restart may
// put this peer's versions up to a step ahead of its clock (until the clock
// catches up): small, so that a crash loop stays far inside the bound
// receivers put on versions ahead of their clock (maxClockAhead).
const versionStep = 60 * 1000

// saveLocked writes the state file, and starts a new journal with it.
// Every change of the ring or of what this peer learnt of others goes
// through it before being acted upon or sent; a change of an allocation
// alone goes through recordLocked.
func (a *Allocator) saveLocked() error { return a.writeFileLocked(true) }

// writeFileLocked writes the state file, with a new journal to go with it
// or (Close) with none.
func (a *Allocator) writeFileLocked(withJournal bool) error {
	if a.cfg.StateFile == "" {
		a.dirty = false
		a.markGatewayDurableLocked()
		return nil
	}
	withJournal = withJournal && !a.journal.off
	var gen uint64
	if withJournal {
		gen = newJournalGen()
	}
	// Nothing more is appended to the old journal: once the new file is
	// written, what it recorded is in the file.
	a.journal.ok = false
	// The list reuses the previous save's, the encoding a pooled buffer,
	// and the store does not keep data.
	a.saveList = a.appendListLocked(a.saveList[:0])
	buf := saveBufs.Get().(*bytes.Buffer)
	defer saveBufs.Put(buf)
	err := encodeFileTo(buf, a.cfg, a.selfID, a.st, a.saveList, a.px.durable, a.gw, a.versionCeil, a.signedWire, gen)
	clear(a.saveList) // holds no strings between saves
	if err != nil {
		return err
	}
	if err := a.store.write(a.cfg.StateFile, buf.Bytes()); err != nil {
		return err
	}
	a.dirty = false
	a.markGatewayDurableLocked()
	a.journal.named = gen
	if withJournal {
		a.startJournalLocked(gen, buf.Len())
	}
	return nil
}

// saveBufs holds the encoding buffers of state file writes. A buffer grows
// to the file's size (about 105 bytes a peer); pooled rather than kept by
// each Allocator, a process of many Allocators (the simulations) holds a
// few instead of one per Allocator, and a daemon still reuses its own.
var saveBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// markGatewayDurableLocked records that the gateway is in the state file.
// A gateway that just became durable may be usable now (OverlayIP), so
// subscribers are told: without it the data plane would put it on the
// bridge only at its next periodic pass, seconds after status reports it.
func (a *Allocator) markGatewayDurableLocked() {
	was := a.gw.durable
	a.gw.durable = a.gw.set
	if a.gw.durable && !was {
		a.ringChangedLocked()
	}
}

// takeOutbox hands over what is to be sent, once everything it may carry
// is durable (I4): if the state file cannot be written, nothing is sent.
// A recovering peer sends only its recovery messages (I6).
func (a *Allocator) takeOutbox() []outMsg {
	out := a.outbox
	a.outbox = nil
	if len(out) == 0 {
		return nil
	}
	if a.dirty {
		if err := a.saveLocked(); err != nil {
			a.log.Error("not sending: state file not written", "err", err)
			return nil
		}
	}
	if a.recovering {
		out = slices.DeleteFunc(out, func(m outMsg) bool {
			return !m.recovery && (m.msg[0] == msgState || m.msg[0] == msgEchoReq || m.msg[0] == msgDelta)
		})
	}
	return out
}

func (a *Allocator) flush(out []outMsg) {
	for _, m := range out {
		if m.to == "" {
			a.tr.Broadcast(m.msg)
		} else {
			for _, to := range append([]string{m.to}, m.alt...) {
				err := a.tr.SendTo(to, m.msg)
				if err == nil {
					break
				}
				a.log.Debug("send failed", "to", to, "err", err)
			}
		}
	}
}

// problem records msg as the problem under key and logs it when it is new
// or its text changed.
func (a *Allocator) problem(key, msg string) {
	if a.problems[key] != msg {
		a.problems[key] = msg
		a.log.Warn(msg)
	}
}
