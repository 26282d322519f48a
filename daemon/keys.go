package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"unicode/utf8"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/mesh"
)

// maxKeys bounds the mesh keys a node holds at once (a rotation needs two,
// an upgrade from the previous release one more).
const maxKeys = mesh.MaxMetaKeys

// keyStore holds this node's mesh keys, newest first, and remembers the
// master key of every password it has stretched, so that a rotation that
// re-reads an unchanged password never runs Argon2id again.
type keyStore struct {
	mu      sync.Mutex
	keys    []*crypto.MasterKey // newest first
	primary *crypto.MasterKey   // encrypts gossip; nil without keys
	// stretched maps a hash of (mesh name, password) to its master key.
	// It is bounded by the passwords ever configured in this process.
	stretched map[[32]byte]*crypto.MasterKey
	// argonRuns counts Argon2id runs, for tests.
	argonRuns int
}

// passwordKey returns the master key of password, stretching it only the
// first time it is seen.
func (s *keyStore) passwordKey(password []byte, meshName string) (*crypto.MasterKey, error) {
	h := sha256.New()
	h.Write([]byte(meshName))
	h.Write([]byte{0})
	h.Write(password)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	s.mu.Lock()
	k, ok := s.stretched[sum]
	s.mu.Unlock()
	if ok {
		return k, nil
	}
	// Without the lock: the reconcile loop reads the keys meanwhile.
	// Rotations are serialised, so no password is stretched twice.
	k, err := crypto.PasswordKey(password, meshName)
	if err != nil {
		return nil, err
	}
	// Argon2id's 64 MiB are garbage now; hand them back to the system
	// rather than carry them in the daemon's resident size.
	debug.FreeOSMemory()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stretched == nil {
		s.stretched = map[[32]byte]*crypto.MasterKey{}
	}
	s.stretched[sum] = k
	s.argonRuns++
	return k, nil
}

// checkPassword refuses a password that is too short to resist guessing,
// unless allowed.
func checkPassword(password []byte, what string, allowShort bool) error {
	if !allowShort && utf8.RuneCount(password) < crypto.MinPasswordLen {
		return fmt.Errorf("%s: %w (make a key file with mesh keygen, or give --allow-short-password)", what, crypto.ErrShortPassword)
	}
	return nil
}

// loadKeys reads every configured secret, newest first: the key file's
// keys, the password files', MESH_PASSWORD's, then, with
// --accept-legacy-key, the previous release's key of each password. It
// reads the files anew each time (a rotation edits them).
func (s *keyStore) loadKeys(cfg *Config) ([]*crypto.MasterKey, error) {
	var keys []*crypto.MasterKey
	var passwords [][]byte
	if cfg.KeyFile != "" {
		raws, err := identity.ReadKeyFile(cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		for _, r := range raws {
			keys = append(keys, crypto.KeyFileKey(r))
		}
	}
	for _, f := range cfg.PasswordFiles {
		pw, err := identity.ReadPasswordFile(f)
		if err != nil {
			return nil, err
		}
		if err := checkPassword(pw, fmt.Sprintf("password file %q", f), cfg.AllowShortPassword); err != nil {
			return nil, err
		}
		passwords = append(passwords, pw)
	}
	if len(cfg.Password) > 0 {
		if err := checkPassword(cfg.Password, "MESH_PASSWORD", cfg.AllowShortPassword); err != nil {
			return nil, err
		}
		passwords = append(passwords, cfg.Password)
	}
	for _, pw := range passwords {
		k, err := s.passwordKey(pw, cfg.MeshName)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if cfg.AcceptLegacyKey {
		for _, pw := range passwords {
			k, err := crypto.LegacyPasswordKey(pw)
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		}
	}
	// One key given twice (the same password in two places) counts once.
	keys = dedupeKeys(keys)
	if len(keys) > maxKeys {
		return nil, fmt.Errorf("%d mesh keys configured, more than %d", len(keys), maxKeys)
	}
	return keys, nil
}

// dedupeKeys drops later duplicates (by ID), keeping the order.
func dedupeKeys(keys []*crypto.MasterKey) []*crypto.MasterKey {
	seen := map[string]bool{}
	out := keys[:0:0]
	for _, k := range keys {
		if !seen[k.ID()] {
			seen[k.ID()] = true
			out = append(out, k)
		}
	}
	return out
}

// keyIDs lists the IDs of keys, in order.
func keyIDs(keys []*crypto.MasterKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID()
	}
	return out
}

// peerKeyIDs is what a member holds: its advertised IDs, or for a node of
// the previous release (which advertises none) the legacy keys.
func peerKeyIDs(mine []*crypto.MasterKey, advertised []string) []string {
	if len(advertised) > 0 {
		return advertised
	}
	var out []string
	for _, k := range mine {
		if k.Legacy() {
			out = append(out, k.ID())
		}
	}
	return out
}

// pairKey picks the key for the WireGuard preshared key of this node and a
// peer holding theirs (IDs): among the keys both hold, the first in this
// node's order if the peer's order agrees, else the one with the smaller
// ID. The rule is symmetric, so both ends pick the same key once each has
// seen the other's list. Without a common key it returns this node's
// first key (the handshake cannot succeed either way).
func pairKey(mine []*crypto.MasterKey, theirs []string) *crypto.MasterKey {
	if len(mine) == 0 {
		return nil
	}
	have := map[string]*crypto.MasterKey{}
	for _, k := range mine {
		have[k.ID()] = k
	}
	var a, b *crypto.MasterKey
	for _, k := range mine {
		if slices.Contains(theirs, k.ID()) {
			a = k
			break
		}
	}
	for _, id := range theirs {
		if k, ok := have[id]; ok {
			b = k
			break
		}
	}
	switch {
	case a == nil:
		return mine[0]
	case a == b || a.ID() < b.ID():
		return a
	default:
		return b
	}
}

// gossipPrimary picks the key this node encrypts gossip with: the first
// (newest) of its keys that every other live member holds, so that a
// member that does not yet hold the newest key can still read us. Alone,
// or when no key is common to all, the current primary stays; at start,
// when nothing is known of the others yet, that is the oldest key.
func gossipPrimary(mine []*crypto.MasterKey, current *crypto.MasterKey, members []mesh.Member) *crypto.MasterKey {
	if len(mine) == 0 {
		return nil
	}
	var others [][]string
	for _, m := range members {
		if m.Self || !m.State.Live() {
			continue
		}
		others = append(others, peerKeyIDs(mine, m.Meta.Keys))
	}
	current = findKey(mine, current)
	if current == nil {
		current = mine[len(mine)-1]
	}
	if len(others) == 0 {
		return current
	}
	for _, k := range mine {
		all := true
		for _, ids := range others {
			if !slices.Contains(ids, k.ID()) {
				all = false
				break
			}
		}
		if all {
			return k
		}
	}
	return current
}

// findKey returns the key of keys with k's ID, or nil.
func findKey(keys []*crypto.MasterKey, k *crypto.MasterKey) *crypto.MasterKey {
	if k == nil {
		return nil
	}
	for _, c := range keys {
		if c.ID() == k.ID() {
			return c
		}
	}
	return nil
}

// gossipKeys returns the primary's gossip key and the others'.
func gossipKeys(keys []*crypto.MasterKey, primary *crypto.MasterKey) ([]byte, [][]byte) {
	var others [][]byte
	for _, k := range keys {
		if k != primary {
			others = append(others, k.GossipKey())
		}
	}
	return primary.GossipKey(), others
}

// errNoKeys is returned by a key rotation without encryption.
var errNoKeys = errors.New("no mesh keys: the daemon runs with --insecure")

// current returns this node's keys, newest first.
func (s *keyStore) current() []*crypto.MasterKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys
}

// updateGossipPrimary moves gossip encryption to the newest key that every
// live member holds, or back to an older one when a member without the
// newest appears (a node of the previous release during an upgrade).
func (d *Daemon) updateGossipPrimary(members []mesh.Member) {
	d.keys.mu.Lock()
	defer d.keys.mu.Unlock()
	if len(d.keys.keys) == 0 {
		return
	}
	p := gossipPrimary(d.keys.keys, d.keys.primary, members)
	if p == d.keys.primary {
		return
	}
	primary, others := gossipKeys(d.keys.keys, p)
	if err := d.members.SetGossipKeys(primary, others); err != nil {
		d.log.Error("cannot change the gossip key", "error", err)
		return
	}
	d.log.Info("gossip now encrypted with another key", "key", p.ID(), "previous", d.keys.primary.ID())
	d.keys.primary = p
}

// Keygen writes a new random mesh key file at path (mode 0600, never over
// an existing file; the key is never printed): `mesh keygen`, through the
// daemon package so the CLI stays a thin client.
func Keygen(path string) error { return identity.WriteNewKeyFile(path) }
