package ipam

import (
	"fmt"
	"slices"
	"strings"
)

// Joining as a voter (docs/ipam.md, "Joining as a voter"). The quorums of
// automatic reclaim intersect only when the lessee and the heir count
// nearly the same voters; a peer that joined during a partition and was
// known to one side only broke that (soak seed 31: one joiner on the
// lessee's side and two on the heir's). So a peer that joins a running
// mesh with reclaim on starts Joining: it counts in N wherever it is
// known, but no quorum counts its word, until every peer it knows has sent
// it a state holding its info. It then publishes itself as a voter. A
// joiner in a partition therefore never votes, a voter that one side does
// not know knew everything that side's peers it heard from had said when
// it was admitted, and the two sides count quorums over the peers both
// know (the argument in docs/ipam.md).

// joinsLocked says whether this peer becomes a joiner as it adopts the
// ring of a merge while it had none (mergeLocked; a ring that replaces
// another, a seeding clash, makes no joiner), or comes back after a
// removal (publishLocked): automatic reclaim is on, every member reads the
// Joining flag (Config.Admission), and it owns nothing in the ring (a peer
// of the first split that learns it from a state votes at once).
func (a *Allocator) joinsLocked() bool {
	return a.cfg.ReclaimAfter > 0 && a.cfg.Admission != nil && a.cfg.Admission() &&
		len(a.st.ring.owned(a.cfg.Self)) == 0
}

// markJoiningLocked makes this peer's info say it is joining; the caller
// persists and publishes it.
func (a *Allocator) markJoiningLocked() {
	me := a.st.peers[a.cfg.Self]
	if me.Joining {
		return
	}
	me.Joining = true
	a.st.peers[a.cfg.Self] = me
	a.dirty = true
	a.log.Info("joined a running mesh: not voting until every peer holds this peer's info")
}

// votesLocked says whether this peer's own word counts in its quorums:
// not while it is joining.
func (a *Allocator) votesLocked() bool { return !a.st.peers[a.cfg.Self].Joining }

// joinMissingLocked lists the peers, removed ones aside, that have not sent
// this peer a state holding its info since it started, sorted.
func (a *Allocator) joinMissingLocked() []string {
	var out []string
	for name, p := range a.st.peers {
		if name != a.cfg.Self && !p.Removed && !a.liveness.heldBy[name] {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// admitLocked makes a joining peer a voter once every peer it knows holds
// its info. It is not done while recovering: what the peer learnt of the
// others must be merged and durable first (I4, I6).
func (a *Allocator) admitLocked() {
	me, ok := a.st.peers[a.cfg.Self]
	if !ok || !me.Joining || a.recovering || a.st.seed.isZero() || len(a.joinMissingLocked()) > 0 {
		return
	}
	me.Joining = false
	a.st.peers[a.cfg.Self] = me
	a.log.Info("every peer holds this peer's info: voting from now on", "peers", len(a.st.peers)-1)
	a.publishLocked()
	if err := a.saveLocked(); err != nil {
		a.log.Error("could not persist the admission", "err", err)
	}
	a.broadcastStateLocked()
}

// joinProblemLocked names, while this peer is joining, the peers it waits
// for that are not members now: no answer will come from them until they
// come back or are removed.
func (a *Allocator) joinProblemLocked() string {
	if a.votesLocked() {
		return ""
	}
	var gone []string
	for _, name := range a.joinMissingLocked() {
		if !a.members[name] {
			gone = append(gone, name)
		}
	}
	if len(gone) == 0 {
		return ""
	}
	return fmt.Sprintf("this peer joined with automatic reclaim on and does not vote until every peer holds its info; %d of them are not members now (%s): they must come back, or, if dead for good, be removed with `mesh rmpeer NAME` on one node",
		len(gone), strings.Join(gone[:min(len(gone), 5)], ", "))
}

// joiningCountLocked counts the peers, this one included, that are joining:
// they count in N but answer no quorum yet.
func (a *Allocator) joiningCountLocked() int {
	n := 0
	for _, p := range a.st.peers {
		if p.joining() {
			n++
		}
	}
	return n
}
