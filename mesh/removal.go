package mesh

import (
	"fmt"
	"time"
)

// RemovalSettle is how long after a peer's death rmpeer waits: two of
// memberlist's full state exchanges (15 s apart) and then some. It is also
// how long this node must have had a view of the mesh (since its daemon
// started, or since it last went from seeing no live peer to seeing one).
const RemovalSettle = 40 * time.Second

// RemovalRefusal says why NAME may not be removed now (its ranges taken
// over by `mesh rmpeer`), given this node's members (every node seen since
// its daemon started), or nil. The rule is membership's: only this node's
// view of who is there, and since when, can vouch that NAME is gone.
//
// Membership only knows what this daemon saw since it started: right after
// a restart, or while cut off from every other peer, a live NAME is simply
// not (yet) listed, and its removal would hand its live pods' addresses to
// this node. So besides NAME being alive or recently dead, rmpeer is
// refused until this node's view of the mesh is RemovalSettle old: joining
// any live peer brings the full member list with the first push/pull, and
// dead members are declared within the same window.
func RemovalRefusal(name string, ms []Member, now time.Time) error {
	for _, m := range ms {
		if m.Name != name {
			continue
		}
		if m.Self {
			return fmt.Errorf("%s is this node; run rmpeer on another node", name)
		}
		if m.State.Live() {
			return fmt.Errorf("refusing to remove %s: it is %s; stop it first, and run rmpeer once it shows dead", name, m.State)
		}
		// The peer's last changes (a range it gave away just before it
		// died) must have reached this node first, or the removal could
		// take back space another node already uses: wait a few full
		// state exchanges after its death.
		if wait := RemovalSettle - now.Sub(m.Since); wait > 0 {
			return fmt.Errorf("refusing to remove %s yet: it died %s ago; try again in %s, once its last changes have spread", name, now.Sub(m.Since).Round(time.Second), wait.Round(time.Second))
		}
	}
	if age, why := viewAge(ms, now); age < RemovalSettle {
		return fmt.Errorf("refusing to remove %s yet: this node %s %s ago and may not know yet whether %s is alive; try again in %s", name, why, age.Round(time.Second), name, (RemovalSettle - age).Round(time.Second))
	}
	return nil
}

// viewAge is how long this node has had its current view of the mesh: since
// it first saw the longest-known peer that is still live, or, seeing none,
// since the last peer died or its daemon started, whichever is later. why
// names the event.
func viewAge(ms []Member, now time.Time) (age time.Duration, why string) {
	var joined, lost, started time.Time
	for _, m := range ms {
		switch {
		case m.Self:
			started = m.Since
		case m.State.Live():
			if joined.IsZero() || m.Since.Before(joined) {
				joined = m.Since
			}
		case m.Since.After(lost):
			lost = m.Since
		}
	}
	switch {
	case !joined.IsZero():
		return now.Sub(joined), "joined the mesh"
	case lost.After(started):
		return now.Sub(lost), "lost its last live peer"
	default:
		return now.Sub(started), "started"
	}
}
