package mesh

import (
	"encoding/json"
	"fmt"
)

// MetaLimit is memberlist's hard limit on node metadata; memberlist panics
// when a delegate returns more, so Meta is checked against it up front.
const MetaLimit = 512

// Meta is what every node tells the others about itself through memberlist's
// node metadata. The short JSON names keep it far below MetaLimit.
type Meta struct {
	PeerID    string `json:"id"`
	Version   string `json:"v,omitempty"`
	PublicKey string `json:"wg,omitempty"` // base64 WireGuard public key
	DPPort    int    `json:"dp,omitempty"` // WireGuard UDP port
	// Keys are the IDs (crypto.MasterKey.ID, never a key) of the mesh keys
	// this node holds, newest first, so that each pair picks a key both
	// ends have. Absent from a node of the previous release, which holds
	// only its legacy key; old nodes ignore the field.
	Keys []string `json:"k,omitempty"`
}

// MaxMetaKeys bounds Meta.Keys, which keeps the metadata under MetaLimit.
const MaxMetaKeys = 8

// Encode returns the wire form of m, or an error when it would not fit.
func (m Meta) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("failed to encode node metadata: %w", err)
	}
	if len(m.Keys) > MaxMetaKeys {
		return nil, fmt.Errorf("node metadata lists %d keys, more than %d", len(m.Keys), MaxMetaKeys)
	}
	if len(b) > MetaLimit {
		return nil, fmt.Errorf("node metadata is %d bytes, more than memberlist's limit of %d", len(b), MetaLimit)
	}
	return b, nil
}

// DecodeMeta parses metadata gossiped by another node. Nodes are trusted only
// as far as they hold the mesh password, so this must not panic on garbage.
func DecodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("invalid node metadata: %w", err)
	}
	if len(m.Keys) > MaxMetaKeys {
		m.Keys = m.Keys[:MaxMetaKeys]
	}
	return m, nil
}
