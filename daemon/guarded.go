package daemon

import (
	"sync"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/mesh"
)

// Small guarded values, one lock each: the daemon's parts run in separate
// goroutines (reconcile loop, isolation sync, control API, rotations), and
// a lock shared by unrelated fields would make each wait on the others and
// hide which field a lock protects.

// lastError keeps the last outcome of a retried operation (NAT table,
// isolation tables, CNI installation) for status. Safe for concurrent use.
type lastError struct {
	mu  sync.Mutex
	err error
}

// set records err (nil: the operation worked) and says whether it differs
// from the error recorded before, so callers log a failure once, not on
// every retry.
func (l *lastError) set(err error) (changed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		changed = l.err != nil
	case l.err == nil:
		changed = true
	default:
		changed = l.err.Error() != err.Error()
	}
	l.err = err
	return changed
}

func (l *lastError) get() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// selfState is what this node is to the others: its WireGuard key and the
// metadata it gossips. Rotations change both; the reconcile loop and status
// read them. Safe for concurrent use.
type selfState struct {
	mu   sync.Mutex
	key  crypto.PrivateKey
	meta mesh.Meta
}

func (s *selfState) get() (crypto.PrivateKey, mesh.Meta) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.key, s.meta
}

// update changes the state under the lock and returns the metadata to
// announce.
func (s *selfState) update(f func(key *crypto.PrivateKey, meta *mesh.Meta)) mesh.Meta {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.key, &s.meta)
	return s.meta
}

// badMetaLog remembers, per current member, why it gets no WireGuard peer,
// so each problem is logged once. Safe for concurrent use.
type badMetaLog struct {
	mu     sync.Mutex
	byName map[string]string
}

// record replaces the record with seen (current members only, so it stays
// bounded) and returns the names whose problem is new.
func (b *badMetaLog) record(seen map[string]string) (fresh []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, problem := range seen {
		if b.byName[name] != problem {
			fresh = append(fresh, name)
		}
	}
	b.byName = seen
	return fresh
}

func (b *badMetaLog) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.byName)
}
