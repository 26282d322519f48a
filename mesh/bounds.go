package mesh

import (
	"net/netip"
	"time"
)

// Bounds on what gossip can make this node remember. memberlist admits any
// name a peer holding the mesh key announces, so the maps kept beside it
// are bounded here, once, and drop what is gone for good first
// (docs/architecture.md, "Trust and keys").
const (
	// maxMembers bounds the member map (which keeps dead members for
	// status); beyond it the member dead or left the longest is dropped.
	maxMembers = 2048
	// maxRemembered bounds the remembered-peers file, which is dialled
	// forever; beyond it an address of no live member is dropped.
	maxRemembered = 256
)

// pruneMembersLocked drops the non-live members that changed state the
// longest ago until the map is within maxMembers. Called with m.mu held.
func (m *Membership) pruneMembersLocked() {
	for len(m.members) > maxMembers {
		oldest, at := "", time.Time{}
		for name, mem := range m.members {
			if mem.Self || mem.State.Live() {
				continue
			}
			if oldest == "" || mem.Since.Before(at) {
				oldest, at = name, mem.Since
			}
		}
		if oldest == "" {
			return // all live: memberlist itself holds them
		}
		delete(m.members, oldest)
	}
}

// byeAllowedLocked says whether a goodbye from name is recorded: only from
// a live member, so invented names cannot grow the goodbye set.
func (m *Membership) byeAllowedLocked(name string) bool {
	mem, ok := m.members[name]
	return ok && mem.State.Live() && !mem.Self
}

// evictRememberedLocked makes room for one more remembered address by
// dropping one that no live member has. It reports whether there is room.
// Called with t.mu held; live is computed by the caller without it.
func (t *targets) evictRememberedLocked(live map[netip.AddrPort]bool) bool {
	if len(t.remembered) < maxRemembered {
		return true
	}
	for a := range t.remembered {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || !live[ap] {
			delete(t.remembered, a)
			if tg, ok := t.list[a]; ok && tg.source == SourceLearned {
				delete(t.list, a)
			}
			return true
		}
	}
	return false
}
