// Package identity is the home of what makes this node itself on disk: its
// identity file (name and peer ID), its WireGuard private key, and the
// mesh key and password files it reads its secrets from. Every file it
// writes is mode 0600, written atomically or never over an existing one;
// every secret file it reads must be readable by its owner alone. The key
// derivations themselves are package crypto's, which does no file I/O.
package identity

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/meshnet/mesh/internal/atomicfile"
)

// Identity is what makes a restarted node the same peer.
type Identity struct {
	Name   string `json:"name"`
	PeerID string `json:"peerID"`
}

// Load reads the identity file, or creates one with a new random
// peer ID. name, when not empty, overrides the stored name (the peer ID,
// not the name, is what stays the same). A file that exists but cannot be
// parsed is an error naming it: silently making a new identity would turn
// this node into a stranger to its own mesh.
func Load(path, name string) (Identity, error) {
	var id Identity
	var stored Identity // what the file holds; zero when there is none
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &id); err != nil {
			return Identity{}, fmt.Errorf("corrupt state file %q: %w (move it away to start as a new peer)", path, err)
		}
		if id.PeerID == "" || len(id.PeerID) != 32 {
			return Identity{}, fmt.Errorf("corrupt state file %q: peer ID %q is not 32 hex digits (move it away to start as a new peer)", path, id.PeerID)
		}
		if _, err := hex.DecodeString(id.PeerID); err != nil {
			return Identity{}, fmt.Errorf("corrupt state file %q: peer ID: %w", path, err)
		}
		stored = id
	case errors.Is(err, fs.ErrNotExist):
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return Identity{}, fmt.Errorf("failed to make a peer ID: %w", err)
		}
		id.PeerID = hex.EncodeToString(b[:])
	default:
		return Identity{}, fmt.Errorf("failed to read state file %q: %w", path, err)
	}
	if name != "" {
		id.Name = name
	}
	if id.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return Identity{}, fmt.Errorf("failed to get the host name for the node name: %w", err)
		}
		id.Name = h
	}
	if id == stored {
		return id, nil
	}
	out, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return Identity{}, err
	}
	if err := atomicfile.Write(path, append(out, '\n'), 0o600); err != nil {
		return Identity{}, fmt.Errorf("failed to save identity: %w", err)
	}
	return id, nil
}
