package ipam

import (
	"cmp"
	"maps"
	"slices"
	"time"
)

// liveness tracks, from merged states only, when each peer was last heard
// of (its info version grew: heartbeats travel transitively, so a peer
// reachable through others is alive) and which peers have echoed our writes.
type liveness struct {
	lastSeen map[string]seen
	echo     map[string]uint64 // voter -> the version of our info it holds
	// heldBy are the peers, joining ones too, that sent a whole state
	// holding our info since this peer started: what admits a joiner.
	heldBy    map[string]bool
	claimEcho map[claimKey]map[string]bool
	// contestedAt is when this peer first saw each contested run (by its
	// first offset); pruned to the ring's contested runs on every pass.
	contestedAt map[uint64]time.Time
}

type seen struct {
	version uint64
	at      time.Time
}

type claimKey struct{ start, version uint64 }

func (l *liveness) init() {
	l.lastSeen = map[string]seen{}
	l.echo = map[string]uint64{}
	l.heldBy = map[string]bool{}
	l.claimEcho = map[claimKey]map[string]bool{}
	l.contestedAt = map[uint64]time.Time{}
}

// observe records what a remote state tells about liveness and echoes.
func (l *liveness) observe(a *Allocator, sender string, remote state) {
	now := a.cfg.Now()
	for name, p := range a.st.peers {
		if s, ok := l.lastSeen[name]; !ok || p.Version > s.version {
			l.lastSeen[name] = seen{p.Version, now}
		}
	}
	if sender == "" || sender == a.cfg.Self {
		return
	}
	if remote.seed.isZero() {
		// A peer with no ring yet holds no lease and no claim for anyone.
		return
	}
	if _, ok := remote.peers[a.cfg.Self]; ok {
		l.heldBy[sender] = true
	}
	if remote.peers[sender].Joining {
		// Not a voter yet: its state answers no quorum.
		return
	}
	if v := remote.peers[a.cfg.Self].Version; v > l.echo[sender] {
		l.echo[sender] = v
	}
	if remote.seed != a.st.seed {
		return
	}
	for i, s := range a.st.ring.segs {
		if s.e.Owner != a.cfg.Self || s.e.Dead == "" {
			continue
		}
		if !holds(remote.ring, s.start, a.st.ring.end(i), s.e) {
			// Only a state that holds this very claim is its echo. One
			// that merely holds the tombstone may also answer another
			// heir of the same tombstone; one that holds our claim
			// never holds a second claim of that version (it merges
			// into contested), so two heirs cannot both count it.
			continue
		}
		k := claimKey{s.start, s.e.Version}
		if l.claimEcho[k] == nil {
			l.claimEcho[k] = map[string]bool{}
		}
		l.claimEcho[k][sender] = true
	}
}

// holds says whether r has entry e at every address of [start, end).
func holds(r ring, start, end uint64, e entry) bool {
	for i := r.find(start); i < len(r.segs) && r.segs[i].start < end; i++ {
		if r.segs[i].e != e {
			return false
		}
	}
	return true
}

// voters are the peers quorums are counted over: every peer ever heard of
// that was not removed by an operator. Joining peers count in N but their
// word counts towards no quorum (votesLocked, observe).
func (a *Allocator) votersLocked() []string {
	var out []string
	for name, p := range a.st.peers {
		if !p.Removed {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// The two quorums of automatic reclaim, over the voter set of N: a lease
// (a pool address, a new gateway) needs echoes from ceil(N/2) voters, this
// peer included; a tombstone, and turning a reclaim claim into plain
// ownership, need floor(N/2)+2 (at most N). Their sum is at least N+2, so a
// lease quorum and a reclaim quorum share a voter even when the two sides
// count one voter apart (a peer that joined during a partition is known to
// one side only; the argument in docs/ipam.md), yet half of the voters
// suffice to keep allocating: with 2 of 4 peers dead the others allocate
// from their own space, and in a 2|2 partition neither half can reclaim the
// other. The price: reclaim proceeds while at most ceil(N/2)-2 voters are
// unreachable, so a mesh of 4 or fewer voters reclaims nothing
// automatically (rmpeer still does).
func (a *Allocator) leaseQuorumLocked() int { return (len(a.votersLocked()) + 1) / 2 }

func (a *Allocator) reclaimQuorumLocked() int { return reclaimQuorum(len(a.votersLocked())) }

// reclaimQuorum is floor(n/2)+2 capped at n: one voter of slack over a
// strict majority against the lease quorum ceil(n/2).
func reclaimQuorum(n int) int { return min(n/2+2, n) }

// inMajorityLocked says whether this peer heard from a reclaim quorum of
// voters within ReclaimAfter/2.
func (a *Allocator) inMajorityLocked() bool {
	now := a.cfg.Now()
	n := 0
	for _, name := range a.votersLocked() {
		if s, ok := a.liveness.lastSeen[name]; name == a.cfg.Self || (ok && now.Sub(s.at) < a.cfg.ReclaimAfter/2) {
			n++
		}
	}
	return n >= a.reclaimQuorumLocked()
}

// echoedVersionLocked is the highest version of our info that a lease
// quorum of voters (us included) is known to hold.
func (a *Allocator) echoedVersionLocked() uint64 {
	voters := a.votersLocked()
	vs := make([]uint64, 0, len(voters))
	for _, v := range voters {
		if v == a.cfg.Self {
			if a.votesLocked() {
				vs = append(vs, a.st.peers[v].Version)
			}
		} else {
			vs = append(vs, a.liveness.echo[v])
		}
	}
	slices.SortFunc(vs, func(x, y uint64) int { return cmp.Compare(y, x) })
	need := max(1, a.leaseQuorumLocked())
	if need > len(vs) {
		return 0
	}
	return vs[need-1]
}

func mapsKeys[K comparable, V any](m map[K]V) []K { return slices.Collect(maps.Keys(m)) }
