package mesh

import (
	"reflect"
	"sync/atomic"
)

// Kinds of metadata change that MetaUpdates counts. Every change of a
// member's metadata is an alive message that every member receives and
// gossips on, and a reconcile on every node; which part changes says what
// to make rarer when a mesh's gossip is busy at rest (docs/scale.md).
const (
	// MetaUpdateCoordinate is a change of the network coordinate alone.
	MetaUpdateCoordinate = "coordinate"
	// MetaUpdatePaths is a change of the path report other than its
	// coordinate: the peers seen down, the probe address, --no-relay or
	// --relay-preference.
	MetaUpdatePaths = "paths"
	// MetaUpdateOther is any other change: keys, endpoints, versions, a
	// NAT home.
	MetaUpdateOther = "other"
)

// metaUpdates counts the metadata changes of other members by kind. Safe
// for concurrent use.
type metaUpdates struct {
	coordinate, paths, other atomic.Uint64
}

// count notes a change of kind (metaUpdateKind); "" is none.
func (u *metaUpdates) count(kind string) {
	switch kind {
	case MetaUpdateCoordinate:
		u.coordinate.Add(1)
	case MetaUpdatePaths:
		u.paths.Add(1)
	case MetaUpdateOther:
		u.other.Add(1)
	}
}

// metaUpdateKind says what changed from was to now: one of the
// MetaUpdate kinds, the first that applies of other, paths and
// coordinate, or "" when nothing did (an alive message that refutes a
// suspicion carries the same metadata).
func metaUpdateKind(was, now Meta) string {
	wp, np := was.Paths, now.Paths
	// The signature changes with anything it signs, and says nothing
	// more itself.
	was.Paths, now.Paths, was.Sig, now.Sig = nil, nil, "", ""
	if !reflect.DeepEqual(was, now) || (wp == nil) != (np == nil) {
		return MetaUpdateOther
	}
	if wp == nil {
		return ""
	}
	if !wp.EqualBesidesCoord(*np) {
		return MetaUpdatePaths
	}
	if !wp.Equal(*np) {
		return MetaUpdateCoordinate
	}
	return ""
}

// MetaUpdates counts the metadata changes of other members this node has
// received since it started, by kind (MetaUpdateCoordinate,
// MetaUpdatePaths, MetaUpdateOther).
func (m *Membership) MetaUpdates() map[string]uint64 {
	return map[string]uint64{
		MetaUpdateCoordinate: m.updates.coordinate.Load(),
		MetaUpdatePaths:      m.updates.paths.Load(),
		MetaUpdateOther:      m.updates.other.Load(),
	}
}
