package api

import "context"

// RotateRequest is `mesh rotate` (POST /v1/rotate).
type RotateRequest struct {
	// NodeKey rotates this node's own WireGuard key instead of re-reading
	// the mesh's key and password files.
	NodeKey bool `json:"nodeKey,omitempty"`
}

// RotateResult is the daemon's key state after a rotation.
type RotateResult struct {
	// KeyIDs are the IDs of the mesh keys held, newest first.
	KeyIDs []string `json:"keyIDs"`
	// GossipKeyID is the key gossip is encrypted with now.
	GossipKeyID string `json:"gossipKeyID"`
	// Added and Dropped are the key IDs the rotation installed and removed.
	Added   []string `json:"added"`
	Dropped []string `json:"dropped"`
	// PublicKey is this node's WireGuard public key.
	PublicKey string `json:"publicKey"`
}

// Rotate asks the daemon to re-read its mesh secrets, or with nodeKey to
// make itself a new WireGuard key.
func (c *Client) Rotate(ctx context.Context, nodeKey bool) (*RotateResult, error) {
	var r RotateResult
	if err := c.Do(ctx, "POST", "/v1/rotate", RotateRequest{NodeKey: nodeKey}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
