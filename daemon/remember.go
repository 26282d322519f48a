package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/atomicfile"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// rememberedFileName holds, in the state dir, the nodes that had a
// WireGuard peer when this daemon last changed its data plane, so that the
// next run applies them at once, before gossip has rejoined (peer.Grace).
const rememberedFileName = "dataplane-peers.json"

// rememberedFormat is the version of that file. A file of another version
// is ignored with a warning: the next run then waits for gossip, as a node
// of the previous release did, and nothing is lost.
const rememberedFormat = 1

// maxRememberedBytes bounds what a start reads of the file; a mesh of
// thousands of nodes fits in a fraction of it.
const maxRememberedBytes = 4 << 20

type rememberedFile struct {
	Format int              `json:"format"`
	Nodes  []rememberedNode `json:"nodes"`
}

// rememberedNode is what the data plane needs of a node: where it is, its
// public key and the IDs (not the keys) of the mesh keys it holds, from
// which the pair's preshared key is derived again.
type rememberedNode struct {
	Name      string     `json:"name"`
	Addr      netip.Addr `json:"addr,omitzero"`
	DPPort    int        `json:"dpPort,omitempty"`
	PublicKey string     `json:"publicKey"`
	KeyIDs    []string   `json:"keyIDs,omitempty"`
}

// rememberedPeers is the daemon's copy of that file: the nodes loaded at
// start, applied until until, and what was last written.
type rememberedPeers struct {
	path  string
	log   *slog.Logger
	nodes []rememberedNode
	until time.Time
	saved []rememberedNode
}

// loadRemembered reads path. A missing file is no node; an unreadable one,
// or one of another format, is logged and ignored.
func loadRemembered(path string, now time.Time, log *slog.Logger) *rememberedPeers {
	r := &rememberedPeers{path: path, log: log, until: now.Add(peer.Grace)}
	nodes, err := readRemembered(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("ignoring the remembered data plane peers: the data plane waits for gossip", "file", path, "error", err)
		}
		return r
	}
	r.nodes, r.saved = nodes, nodes
	if len(nodes) > 0 {
		log.Info("applying the data plane peers of the last run until gossip has rejoined", "peers", len(nodes), "grace", peer.Grace.String())
	}
	return r
}

func readRemembered(path string) ([]rememberedNode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRememberedBytes+1))
	if err != nil {
		return nil, fmt.Errorf("failed to read %s: %w", path, err)
	}
	if len(b) > maxRememberedBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxRememberedBytes)
	}
	var file rememberedFile
	if err := json.Unmarshal(b, &file); err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", path, err)
	}
	if file.Format != rememberedFormat {
		return nil, fmt.Errorf("%s has format %d, this release reads %d", path, file.Format, rememberedFormat)
	}
	seen := make(map[string]bool, len(file.Nodes))
	for _, n := range file.Nodes {
		if n.Name == "" || seen[n.Name] {
			return nil, fmt.Errorf("%s: empty or repeated node name %q", path, n.Name)
		}
		seen[n.Name] = true
		if _, err := crypto.ParseKey(n.PublicKey); err != nil {
			return nil, fmt.Errorf("%s: node %q: %w", path, n.Name, err)
		}
		if n.DPPort < 0 || n.DPPort > 65535 {
			return nil, fmt.Errorf("%s: node %q: data plane port %d out of range", path, n.Name, n.DPPort)
		}
	}
	return file.Nodes, nil
}

// input returns the remembered nodes as the peer package takes them, with
// the preshared key's secret picked from keys as for a gossiped node.
func (r *rememberedPeers) input(keys []*crypto.MasterKey) ([]peer.Node, time.Time) {
	if r == nil { // a daemon put together without Start (tests)
		return nil, time.Time{}
	}
	out := make([]peer.Node, 0, len(r.nodes))
	for _, n := range r.nodes {
		pub, _ := crypto.ParseKey(n.PublicKey) // checked by readRemembered
		pn := peer.Node{Name: n.Name, Addr: n.Addr, DPPort: n.DPPort, PublicKey: pub, State: api.MemberAlive}
		if len(keys) > 0 {
			pn.Secret = pairKey(keys, peerKeyIDs(keys, n.KeyIDs))
		}
		out = append(out, pn)
	}
	return out, r.until
}

// save writes the nodes that have a peer under in when they differ from
// what was last written. keyIDs are the members' advertised key IDs.
func (r *rememberedPeers) save(in peer.Input, members []mesh.Member) {
	if r == nil {
		return
	}
	kept, err := peer.Kept(in)
	if err != nil {
		return // the reconciler reports the bad input
	}
	ids := make(map[string][]string, len(members)+len(r.nodes))
	for _, n := range r.nodes {
		ids[n.Name] = n.KeyIDs
	}
	for _, m := range members {
		ids[m.Name] = m.Meta.Keys
	}
	nodes := make([]rememberedNode, 0, len(kept))
	for _, n := range kept {
		nodes = append(nodes, rememberedNode{Name: n.Name, Addr: n.Addr, DPPort: n.DPPort, PublicKey: n.PublicKey.String(), KeyIDs: ids[n.Name]})
	}
	slices.SortFunc(nodes, func(a, b rememberedNode) int { return strings.Compare(a.Name, b.Name) })
	if slices.EqualFunc(nodes, r.saved, equalRemembered) {
		return
	}
	b, err := json.Marshal(rememberedFile{Format: rememberedFormat, Nodes: nodes})
	if err == nil {
		err = atomicfile.Write(r.path, b, 0o600)
	}
	if err != nil {
		r.log.Warn("failed to save the data plane peers for the next start", "file", r.path, "error", err)
		return
	}
	r.saved = nodes
}

// forget removes the file: a node that left the mesh starts afresh.
func (r *rememberedPeers) forget() {
	if r == nil {
		return
	}
	if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("failed to remove the remembered data plane peers", "file", r.path, "error", err)
	}
	r.saved = nil
}

func equalRemembered(a, b rememberedNode) bool {
	return a.Name == b.Name && a.Addr == b.Addr && a.DPPort == b.DPPort && a.PublicKey == b.PublicKey && slices.Equal(a.KeyIDs, b.KeyIDs)
}
