package daemon

import (
	"errors"
	"fmt"
	"slices"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/control"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/mesh"
)

// status returns the key IDs held and the gossip key's.
func (s *keyStore) status() ([]string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.keys) == 0 {
		return nil, ""
	}
	return keyIDs(s.keys), s.primary.ID()
}

// keysAPI is control.Keys: `mesh rotate`.
type keysAPI struct{ d *Daemon }

func (p keysAPI) Rotate(req api.RotateRequest) (*api.RotateResult, error) {
	var res *api.RotateResult
	var err error
	if req.NodeKey {
		res, err = p.d.rotateNodeKey()
	} else {
		res, err = p.d.rotateMeshKeys()
	}
	if errors.Is(err, errNoKeys) || errors.Is(err, errBadSecrets) {
		return nil, control.Mark(control.ErrInvalid, err)
	}
	return res, err
}

// errBadSecrets marks a rotation refused because the secrets on disk are
// unusable; the keys in use stay as they were.
var errBadSecrets = errors.New("mesh keys unchanged")

// rotateMeshKeys re-reads the key and password files and installs what
// they hold: new keys are accepted at once and encrypt gossip once every
// live member holds them (see updateGossipPrimary); keys no longer listed
// are dropped. The gossip key in use, when dropped, is replaced by the
// newest key.
func (d *Daemon) rotateMeshKeys() (*api.RotateResult, error) {
	d.rotateMu.Lock()
	defer d.rotateMu.Unlock()
	if !d.cfg.hasSecret() {
		return nil, errNoKeys
	}
	keys, err := d.keys.loadKeys(&d.cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadSecrets, err)
	}
	members := d.members.Members()
	d.keys.mu.Lock()
	old := d.keys.keys
	primary := findKey(keys, d.keys.primary)
	if primary == nil {
		primary = keys[0]
	}
	primary = gossipPrimary(keys, primary, members)
	pk, others := gossipKeys(keys, primary)
	if err := d.members.SetGossipKeys(pk, others); err != nil {
		d.keys.mu.Unlock()
		return nil, err
	}
	d.keys.keys, d.keys.primary = keys, primary
	d.keys.mu.Unlock()

	ids, oldIDs := keyIDs(keys), keyIDs(old)
	res := &api.RotateResult{KeyIDs: ids, GossipKeyID: primary.ID(), Added: []string{}, Dropped: []string{}}
	for _, id := range ids {
		if !slices.Contains(oldIDs, id) {
			res.Added = append(res.Added, id)
		}
	}
	for _, id := range oldIDs {
		if !slices.Contains(ids, id) {
			res.Dropped = append(res.Dropped, id)
		}
	}
	meta := d.self.update(func(_ *crypto.PrivateKey, m *mesh.Meta) {
		m.Keys = ids
		if m.Paths != nil {
			// More key IDs leave less room for the path report.
			*m = m.WithPaths(*m.Paths)
		}
	})
	res.PublicKey = meta.PublicKey
	if err := d.members.UpdateMeta(meta); err != nil {
		d.log.Warn("failed to announce the new key IDs", "error", err)
	}
	d.log.Info("mesh keys rotated", "keys", ids, "added", res.Added, "dropped", res.Dropped, "gossip", primary.ID())
	d.kickReconcile()
	return res, nil
}

// rotateNodeKey makes this node a new WireGuard key, saves it (mode 0600),
// takes it into the data plane and announces its public key; peers move
// their entry for this node to the new key on their next reconcile.
func (d *Daemon) rotateNodeKey() (*api.RotateResult, error) {
	d.rotateMu.Lock()
	defer d.rotateMu.Unlock()
	k, err := crypto.GeneratePrivateKey()
	if err != nil {
		return nil, err
	}
	pub, err := k.Public()
	if err != nil {
		return nil, err
	}
	if err := identity.SaveWireGuardKey(d.cfg.path("wireguard.key"), k); err != nil {
		return nil, err
	}
	meta := d.self.update(func(key *crypto.PrivateKey, m *mesh.Meta) {
		*key = k
		m.PublicKey = pub.String()
	})
	// Ask for the data plane's pass before announcing, so that the new
	// key is usually in place when the peers, which switch as soon as they
	// hear of it, handshake.
	d.kickReconcile()
	if err := d.members.UpdateMeta(meta); err != nil {
		return nil, fmt.Errorf("node key changed but not yet announced (gossip retries): %w", err)
	}
	d.log.Info("node key rotated", "publicKey", pub.String())
	ids, gossip := d.keys.status()
	return &api.RotateResult{KeyIDs: ids, GossipKeyID: gossip, Added: []string{}, Dropped: []string{}, PublicKey: pub.String()}, nil
}

func (d *Daemon) kickReconcile() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}
