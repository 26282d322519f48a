// Package api is the contract of the daemon's local control API: the JSON
// types served on the unix socket, and a client for them. It is used by the
// CLI and by mesh-cni, so it imports nothing else of the project and stays
// cheap to link into a binary that starts once per pod.
package api

// Status is the answer of GET /v1/status and the output of
// `mesh status -o json`. Fields are only ever added, never renamed or
// removed: scripts depend on them. See docs/architecture.md.
type Status struct {
	Name    string   `json:"name"`
	PeerID  string   `json:"peerID"`
	Version string   `json:"version"`
	Peers   []Peer   `json:"peers"`
	Targets []Target `json:"targets"`
}

// Peer is one member of the mesh as this node sees it.
type Peer struct {
	Name    string `json:"name"`
	PeerID  string `json:"peerID,omitempty"`
	Address string `json:"address"`
	// State is alive, suspect, dead or left.
	State string `json:"state"`
	Self  bool   `json:"self"`
}

// Target is a peer address this node tries to join.
type Target struct {
	Address string `json:"address"`
	// Source is launch (named on the command line), connect (added with
	// `mesh connect`) or learned (remembered from gossip; retried whenever
	// not connected, but listed only while this node sees no other peer).
	Source string `json:"source"`
	// State is connected, retrying, or failed (the peer refused us, for
	// example for a wrong password; retries go on).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// NextRetry is an RFC 3339 time, empty when connected.
	NextRetry string `json:"nextRetry,omitempty"`
}

// PeerRequest names a peer for POST /v1/connect and /v1/forget.
type PeerRequest struct {
	Address string `json:"address"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}
