package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"

	"github.com/hashicorp/memberlist"

	"github.com/meshnet/mesh/identity"
)

// maxBindings bounds the name → identity table (and the refusals kept for
// status). Beyond it a name not yet bound is refused rather than an old
// binding dropped: dropping one would let any node take that name.
const maxBindings = maxMembers

// bindings is trust on first use of node names: the first signing key seen
// for a name is bound to it and persisted; metadata for that name under
// another key, with a bad signature or without one is refused.
type bindings struct {
	log  *slog.Logger
	self string
	path string // empty: not persisted (tests)

	mu      sync.Mutex
	table   map[string]string // name → base64 public key
	refused map[string]string // name → last refusal, for status
	counts  map[string]uint64 // reason → refusals
	logged  map[string]bool   // name+reason logged once

	// verified is, per name, the last signed metadata that checked out.
	// memberlist hands NotifyAlive every entry of every state exchange,
	// nearly all unchanged, and an ed25519 verification each was 42 % of
	// the CPU of a 200-member start (docs/scale.md, "Membership on
	// loopback"); VerifyMeta is a pure function of the bytes, the name
	// and the address, so the same three need no second check.
	verified map[string]verifiedMeta
	checks   uint64 // signature checks made, for tests
}

// verifiedMeta is metadata whose signature checked out, with the address
// it was checked for and the key that signed it.
type verifiedMeta struct {
	meta []byte
	addr netip.AddrPort
	pub  ed25519.PublicKey
}

// verify is VerifyMeta, remembered per name for signed metadata that
// checked out.
func (b *bindings) verify(meta []byte, name string, addr netip.AddrPort) (ed25519.PublicKey, error) {
	b.mu.Lock()
	v, ok := b.verified[name]
	if ok && v.addr == addr && bytes.Equal(v.meta, meta) {
		b.mu.Unlock()
		return v.pub, nil
	}
	b.checks++
	b.mu.Unlock()
	_, pub, err := VerifyMeta(meta, name, addr)
	if err != nil || pub == nil {
		return pub, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, known := b.verified[name]; !known && len(b.verified) >= maxBindings {
		// Bounded like the bindings; forgetting costs only a check.
		clear(b.verified)
	}
	b.verified[name] = verifiedMeta{meta: bytes.Clone(meta), addr: addr, pub: pub}
	return pub, nil
}

func newBindings(path, self string, log *slog.Logger) (*bindings, error) {
	table := map[string]string{}
	if path != "" {
		var err error
		if table, err = identity.LoadBindings(path); err != nil {
			return nil, err
		}
	}
	return &bindings{log: log, self: self, path: path, table: table,
		refused: map[string]string{}, counts: map[string]uint64{}, logged: map[string]bool{},
		verified: map[string]verifiedMeta{}}, nil
}

// check is memberlist's AliveDelegate: it runs on every alive message and
// state exchange entry before memberlist uses it, so a refused node never
// enters the member list.
func (b *bindings) NotifyAlive(n *memberlist.Node) error {
	if n.Name == b.self {
		// Our own messages; memberlist refutes others' claims of our name.
		return nil
	}
	pub, err := b.verify(n.Meta, n.Name, nodeAddr(n))
	b.mu.Lock()
	defer b.mu.Unlock()
	bound, isBound := b.table[n.Name]
	switch {
	case err != nil && errors.Is(err, errBadSignature):
		return b.refuseLocked(n.Name, RefusedBadSignature, err)
	case err != nil && isBound:
		return b.refuseLocked(n.Name, RefusedBadSignature, err)
	case err != nil:
		// Undecodable metadata of an unbound name is shown as a
		// member error, as before.
		return nil
	case pub == nil && isBound:
		return b.refuseLocked(n.Name, RefusedUnsigned, errors.New("unsigned metadata for a name bound to an identity"))
	case pub == nil:
		return nil // a node of the previous release
	}
	key := base64.StdEncoding.EncodeToString(pub)
	if isBound {
		if key != bound {
			return b.refuseLocked(n.Name, RefusedOtherKey, fmt.Errorf("identity %s differs from the one bound to the name, %s (mesh forget-identity %s releases it)", short(key), short(bound), n.Name))
		}
		delete(b.refused, n.Name)
		return nil
	}
	if len(b.table) >= maxBindings {
		return b.refuseLocked(n.Name, RefusedTableFull, fmt.Errorf("%d names are bound already", maxBindings))
	}
	b.table[n.Name] = key
	delete(b.refused, n.Name)
	if err := b.saveLocked(); err != nil {
		delete(b.table, n.Name)
		return fmt.Errorf("failed to bind %s: %w", n.Name, err)
	}
	b.log.Info("bound node name to its identity", "peer", n.Name, "identity", short(key))
	return nil
}

func (b *bindings) refuseLocked(name, reason string, err error) error {
	b.counts[reason]++
	if _, ok := b.refused[name]; ok || len(b.refused) < maxBindings {
		b.refused[name] = fmt.Sprintf("refused node %s (%s): %v", name, reason, err)
	}
	if k := name + "\x00" + reason; !b.logged[k] && len(b.logged) < maxBindings {
		b.logged[k] = true
		b.log.Warn("refused a node's metadata", "peer", name, "reason", reason, "error", err)
	}
	return fmt.Errorf("refused %s: %s: %w", name, reason, err)
}

func (b *bindings) saveLocked() error {
	if b.path == "" {
		return nil
	}
	return identity.SaveBindings(b.path, b.table)
}

// forget releases name's binding; the next identity seen for it is bound.
func (b *bindings) forget(name string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	key, ok := b.table[name]
	if !ok {
		return false, nil
	}
	delete(b.table, name)
	if err := b.saveLocked(); err != nil {
		b.table[name] = key
		return false, err
	}
	delete(b.refused, name)
	for k := range b.logged {
		if n, _, _ := bytes.Cut([]byte(k), []byte{0}); string(n) == name {
			delete(b.logged, k)
		}
	}
	b.log.Warn("released a node name's identity binding", "peer", name, "identity", short(key))
	return true, nil
}

func (b *bindings) problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.refused))
	for _, p := range b.refused {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func (b *bindings) refusals() map[string]uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make(map[string]uint64, len(b.counts))
	for k, v := range b.counts {
		out[k] = v
	}
	return out
}

func (b *bindings) boundKey(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.table[name]
}

// short names a public key in logs and status: its first 12 base64
// characters, enough to tell two apart.
func short(key string) string {
	if len(key) > 12 {
		return key[:12]
	}
	return key
}

var _ memberlist.AliveDelegate = (*bindings)(nil)
