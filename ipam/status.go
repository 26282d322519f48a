package ipam

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// Status is the "ipam" section of `mesh status -o json`; the CLI also draws
// `mesh status ipam` (one line per peer) from Peers.
type Status struct {
	Range string `json:"range"`
	// Status is "waiting" (ring not seeded yet), "ready", or "conflict"
	// (some address is held by two peers: see Conflicts).
	Status    string       `json:"status"`
	Owned     []string     `json:"owned"`
	Allocated int          `json:"allocated"`
	Free      uint64       `json:"free"`
	OverlayIP string       `json:"overlayIP,omitempty"`
	Seed      string       `json:"seed,omitempty"`
	Ranges    []RangeOwner `json:"ranges"`
	Peers     []PeerStatus `json:"peers"`
	// Conflicts lists addresses held by more than one peer.
	Conflicts []string `json:"conflicts"`
	// Problems explains anything an operator should act on.
	Problems []string `json:"problems"`
	// Blocked names, in plain words, what this peer is waiting for before
	// it can make progress (place a pod, use its gateway, reclaim); empty
	// when nothing waits. BlockedReason is its kind, one of
	// BlockedReasons (the metric's label).
	Blocked       string `json:"blocked,omitempty"`
	BlockedReason string `json:"blockedReason,omitempty"`
	// Rejected counts remote input refused since start, by reason (one of
	// RejectReasons, the metric's label); each reason that occurred is
	// also one line of Problems.
	Rejected map[string]uint64 `json:"rejected,omitempty"`
	// StateBytes is the size of this peer's whole state as last encoded
	// for sending (0 before the first); a receiver refuses one over
	// MaxStateBytes. Tombstones counts the removed peers it carries,
	// about 120 bytes each (docs/ipam.md, "Bounds on what a peer may
	// claim"); once TombstonesAcked (every member reads acknowledgements),
	// each is dropped once every peer has acknowledged it, and
	// TombstonesDropped counts those dropped since this peer started
	// (docs/ipam.md, "Dropping tombstones").
	StateBytes        int  `json:"stateBytes,omitempty"`
	Tombstones        int  `json:"tombstones,omitempty"`
	TombstonesAcked   bool `json:"tombstonesAcked,omitempty"`
	TombstonesDropped int  `json:"tombstonesDropped,omitempty"`
	// ReclaimsVouched says this peer lists its vouches and marks its
	// space as moved by a reclaim only with a majority's vouches
	// (docs/ipam.md, "Vouched reclaims").
	ReclaimsVouched bool `json:"reclaimsVouched,omitempty"`
}

// The kinds of waiting Status.Blocked names.
const (
	BlockedBootstrap   = "bootstrap"    // the first split is not agreed yet
	BlockedRecovery    = "recovery"     // restarted, no state exchange with a lease quorum yet (I6)
	BlockedLeaseEcho   = "lease-echo"   // a pool address or a new gateway waits for echoes
	BlockedSpace       = "space"        // owns no free address, waits for a donation
	BlockedReclaimEcho = "reclaim-echo" // a reclaim claim waits for a majority's echo
)

// BlockedReasons lists every BlockedReason, for metrics.
var BlockedReasons = []string{BlockedBootstrap, BlockedRecovery, BlockedLeaseEcho, BlockedSpace, BlockedReclaimEcho}

// RangeOwner is one CIDR of the ring and its owner ("" for nobody: not yet
// seeded, or the space of a removed peer waiting for its heir).
type RangeOwner struct {
	CIDR  netip.Prefix `json:"cidr"`
	Owner string       `json:"owner"`
}

// PeerStatus summarises one peer of the ring, for `mesh status ipam`.
type PeerStatus struct {
	Name      string  `json:"name"`
	ID        string  `json:"id,omitempty"`
	Owned     uint64  `json:"owned"`   // addresses
	Percent   float64 `json:"percent"` // of the cluster range
	Free      uint64  `json:"free"`
	Held      int     `json:"held"`
	Reachable bool    `json:"reachable"`
	Removed   bool    `json:"removed,omitempty"`
	// Joining: the peer joined with automatic reclaim on and does not
	// vote yet (docs/ipam.md, "Joining as a voter").
	Joining bool `json:"joining,omitempty"`
}

// Status returns a snapshot for the status API. Non-blocking; safe for
// concurrent use.
func (a *Allocator) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{
		Range:     a.cfg.Range.String(),
		Status:    a.statusWordLocked(),
		Owned:     []string{},
		Allocated: len(a.allocs) - a.hostAllocsLocked(),
		Free:      a.freeCount(),
		Ranges:    a.rangesLocked(),
		Conflicts: a.conflictsLocked(),
		Problems:  []string{},
	}
	if a.gatewayUsableLocked() {
		s.OverlayIP = offsetAddr(a.cfg.Range, a.gw.off).String()
	}
	if !a.st.seed.isZero() {
		s.Seed = fmt.Sprintf("%016x/%d", a.st.seed.ID, a.st.seed.Members)
	}
	for _, sp := range a.st.ring.owned(a.cfg.Self) {
		for _, p := range spanCIDRs(a.cfg.Range, sp) {
			s.Owned = append(s.Owned, p.String())
		}
	}
	owned := map[string]uint64{}
	for i, sg := range a.st.ring.segs {
		if sg.e.Owner != "" {
			owned[sg.e.Owner] += a.st.ring.end(i) - sg.start
		}
	}
	names := mapsKeys(a.st.peers)
	for n := range owned {
		if _, ok := a.st.peers[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		p := a.st.peers[n]
		s.Peers = append(s.Peers, PeerStatus{
			Name: n, ID: p.ID, Owned: owned[n],
			Percent:   100 * float64(owned[n]) / float64(a.st.ring.size),
			Free:      p.Free,
			Held:      len(p.Held),
			Reachable: a.members[n],
			Removed:   p.Removed,
			Joining:   p.joining(),
		})
	}
	if s.Status == "waiting" {
		s.Problems = append(s.Problems, fmt.Sprintf("waiting for %d of the %d initial peers to agree on the first split (%d reachable)",
			a.quorum(), a.cfg.InitialPeerCount, len(a.aliveNames())))
	}
	if p := a.joinProblemLocked(); p != "" {
		s.Problems = append(s.Problems, p)
	}
	if n := len(a.st.peers[a.cfg.Self].Vouches); n >= maxVouches {
		s.Problems = append(s.Problems, fmt.Sprintf("this peer vouches for %d silent peers, the most an info lists: it vouches for no more, and their reclaims may wait; remove the dead ones with `mesh rmpeer NAME`", n))
	}
	for _, k := range slices.Sorted(maps.Keys(a.problems)) {
		s.Problems = append(s.Problems, a.problems[k])
	}
	var rejected []string
	s.Rejected, rejected = a.rejectionsLocked()
	s.Problems = append(s.Problems, rejected...)
	for _, n := range names {
		if p := a.st.peers[n]; p.removedHolding() {
			s.Problems = append(s.Problems, fmt.Sprintf("%d addresses of deleted node %s stay reserved in case its pods still run: with --kube the daemons release them once the Kubernetes API lists none of its pods; otherwise run `mesh rmpeer %s` on one node once they are surely gone", len(p.Held), n, n))
		}
	}
	s.BlockedReason, s.Blocked = a.blockedLocked()
	s.StateBytes, s.Tombstones = a.stateBytes, a.removedCountLocked()
	s.TombstonesAcked, s.TombstonesDropped = a.st.peers[a.cfg.Self].ListsAcks, a.acks.count
	s.ReclaimsVouched = a.st.peers[a.cfg.Self].ListsVouches
	return s
}

// blockedLocked says what this peer waits for, most fundamental first.
func (a *Allocator) blockedLocked() (reason, text string) {
	switch {
	case a.st.seed.isZero():
		return BlockedBootstrap, fmt.Sprintf("waiting for %d of the %d initial peers to agree on the first split", a.quorum(), a.cfg.InitialPeerCount)
	case a.recovering:
		q := a.leaseQuorumLocked()
		text = fmt.Sprintf("waiting for a state exchange with half of the voters after restart: %d of %d voters (this peer included) answered", a.recoveredCountLocked(), q)
		if up := a.memberVotersLocked(); up < q {
			// No answer can end this: say what will.
			text += fmt.Sprintf("; only %d of the %d voters are members now: the others must come back, or, if dead for good, be removed with `mesh rmpeer NAME` on one node", up, len(a.votersLocked()))
		}
		return BlockedRecovery, text
	}
	_, hasGw := a.gatewayOff()
	v, pending := a.pendingLeaseLocked()
	if !pending {
		v = a.st.peers[a.cfg.Self].Version // the pool refills at the next tick
	}
	if a.leaseWaitLocked() || (pending && hasGw && !a.gatewayUsableLocked()) {
		self := "this peer included"
		if !a.votesLocked() {
			self = "this peer is joining and does not count"
		}
		text = fmt.Sprintf("waiting for lease echoes: %d of %d voters answered (%s)", a.echoCountLocked(v), a.leaseQuorumLocked(), self)
		if j := a.joiningCountLocked(); j > 0 {
			text += fmt.Sprintf("; %d joining peers count among the voters but answer only once every peer holds their info", j)
		}
		return BlockedLeaseEcho, text
	}
	if !hasGw || (a.waiting > 0 && a.freeCount() == 0) {
		who := "no reachable peer has offered free space"
		if d, ok := a.bestDonor(); ok {
			who = "asked " + d
		}
		return BlockedSpace, "waiting for space: " + who
	}
	for _, sg := range a.st.ring.segs {
		if sg.e.isClaim() && sg.e.Owner == a.cfg.Self && a.claimNeedsEchoLocked(sg.e) {
			n := a.claimEchoCountLocked(sg.start, sg.e.Version)
			what := sg.e.Dead + "'s space"
			if sg.e.Dead == a.cfg.Self {
				what = "contested space"
			}
			return BlockedReclaimEcho, fmt.Sprintf("waiting for a majority to hold the reclaim of %s: %d of %d voters answered", what, n, a.reclaimQuorumLocked())
		}
	}
	return "", ""
}

// pendingLeaseLocked returns the lowest version of our info that a pool
// address or a new gateway waits to see echoed.
func (a *Allocator) pendingLeaseLocked() (uint64, bool) {
	if a.cfg.ReclaimAfter <= 0 {
		return 0, false
	}
	ev := a.echoedVersionLocked()
	best, ok := uint64(0), false
	consider := func(v uint64) {
		if v > ev && (!ok || v < best) {
			best, ok = v, true
		}
	}
	for off, v := range a.pool {
		if _, used := a.byOff[off]; !used && v != 0 {
			consider(v)
		}
	}
	if a.gwAwaitingEchoLocked() {
		consider(a.gw.version)
	}
	return best, ok
}

// memberVotersLocked counts the voters that membership reports alive, this
// peer included.
func (a *Allocator) memberVotersLocked() int {
	n := 0
	for _, v := range a.votersLocked() {
		if v == a.cfg.Self || a.members[v] {
			n++
		}
	}
	return n
}

// echoCountLocked counts the voters (this peer included) known to hold our
// info at version v or later.
func (a *Allocator) echoCountLocked(v uint64) int {
	n := 0
	for _, name := range a.votersLocked() {
		if name == a.cfg.Self && a.votesLocked() || name != a.cfg.Self && a.liveness.echo[name] >= v {
			n++
		}
	}
	return n
}

// String renders Status for `mesh status ipam`: a header then one line per
// peer, sorted, unreachable ones marked.
func (s Status) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "range %s  status %s  allocated %d  free %d\n", s.Range, s.Status, s.Allocated, s.Free)
	for _, p := range s.Peers {
		mark := ""
		switch {
		case p.Removed:
			mark = " removed"
		case !p.Reachable:
			mark = " unreachable"
		case p.Joining:
			mark = " joining"
		}
		fmt.Fprintf(&b, "%-24s %10d IPs (%5.1f%% of total) %d held%s\n", p.Name, p.Owned, p.Percent, p.Held, mark)
	}
	for _, c := range s.Conflicts {
		fmt.Fprintf(&b, "CONFLICT: %s\n", c)
	}
	for _, p := range s.Problems {
		fmt.Fprintf(&b, "problem: %s\n", p)
	}
	if s.Blocked != "" {
		fmt.Fprintf(&b, "blocked: %s\n", s.Blocked)
	}
	return b.String()
}

// Ranges returns this peer's view of the whole ring as CIDRs with their
// owners, sorted by address. Once gossip settles every peer returns the
// same list. Non-blocking; safe for concurrent use.
func (a *Allocator) Ranges() []RangeOwner {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rangesLocked()
}

func (a *Allocator) rangesLocked() []RangeOwner {
	var out []RangeOwner
	r := a.st.ring
	for i := 0; i < len(r.segs); {
		owner := r.segs[i].e.Owner
		j := i + 1
		for j < len(r.segs) && r.segs[j].e.Owner == owner {
			j++
		}
		end := r.size
		if j < len(r.segs) {
			end = r.segs[j].start
		}
		for _, p := range spanCIDRs(a.cfg.Range, span{r.segs[i].start, end}) {
			out = append(out, RangeOwner{CIDR: p, Owner: owner})
		}
		i = j
	}
	return out
}

func (a *Allocator) statusWordLocked() string {
	switch {
	case a.st.seed.isZero():
		return "waiting"
	case len(a.conflictsLocked()) > 0:
		return "conflict"
	}
	return "ready"
}

// conflictsLocked lists addresses that two peers hold (our allocations
// included), at most 20.
func (a *Allocator) conflictsLocked() []string {
	holders := map[uint64][]string{}
	for off := range a.byOff {
		holders[off] = append(holders[off], a.cfg.Self)
	}
	if gw, ok := a.gatewayOff(); ok {
		holders[gw] = append(holders[gw], a.cfg.Self)
	}
	for name, p := range a.st.peers {
		if name == a.cfg.Self || p.Removed {
			continue
		}
		for _, off := range p.Held {
			holders[off] = append(holders[off], name)
		}
	}
	out := []string{}
	for _, off := range slices.Sorted(maps.Keys(holders)) {
		if h := holders[off]; len(h) > 1 {
			slices.Sort(h)
			out = append(out, fmt.Sprintf("%s is held by %s: delete the pod (for a node's gateway: all the node's pods) on all but one of these peers", offsetAddr(a.cfg.Range, off), strings.Join(h, " and ")))
			if len(out) == 20 {
				break
			}
		}
	}
	return out
}
