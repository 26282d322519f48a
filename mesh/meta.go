package mesh

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/meshnet/mesh/coord"
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
	// Paths is what this node observes of its direct data-plane paths
	// (docs/routing.md). Absent from a node of the previous release,
	// which is then neither relayed to nor through; old nodes ignore it.
	Paths *PathMeta `json:"p,omitempty"`
	// GossipRelay is the version of the gossip relay envelope the node
	// reads (relay.go); set by the membership itself. A node of the
	// previous release has none and is never sent an envelope to relay.
	GossipRelay int `json:"gr,omitempty"`
	// GossipRelayAuth is the version of the authenticated envelope the
	// node reads (relayauth.go), set by the membership itself when gossip
	// is encrypted. A node of the previous release has none: it is sent
	// envelopes without a tag, and while it is live such envelopes are
	// accepted.
	GossipRelayAuth int `json:"ga,omitempty"`
	// Home is, for a node behind NAT (Config.BehindNAT), the member it is
	// attached to: every other member sends it gossip through that one
	// (nathome.go). Set by the membership itself; empty otherwise.
	Home string `json:"nh,omitempty"`
	// PublicAddr is, for a node behind NAT, the address its NAT gives
	// its connections, as the peer that checked its reachability saw it
	// (natcheck.go): the others send its data plane there, where its NAT
	// lets in what answers the node's own packets, rather than to its
	// private advertised address. Set by the membership itself; empty
	// otherwise, and ignored by nodes of the previous release.
	PublicAddr string `json:"pa,omitempty"`
	// PublicPort is, for a node behind NAT, the UDP port its NAT gives its
	// data plane when that is not DPPort, as the peers it asked saw it
	// (the daemon's natport.go): the others send its data plane to
	// PublicAddr and this port. Zero (absent) means DPPort. Set by the
	// daemon, kept only with PublicAddr, and ignored by nodes of the
	// previous release, which send to PublicAddr and DPPort.
	PublicPort int `json:"pp,omitempty"`
	// SignKey is the node's long-term ed25519 public key (base64) and
	// SigVersion the format of Sig (MetaSigVersion). Absent from a node
	// of the previous release, which is then accepted unsigned while its
	// name is bound to no key (docs/architecture.md, "Trust and keys").
	SignKey    string `json:"sk,omitempty"`
	SigVersion int    `json:"sv,omitempty"`
	// IPAMInfos says how the node handles signed IPAM peer infos
	// (docs/ipam.md, "Signed peer infos"): absent (0) on a node of the
	// previous release, which reads no state with signatures;
	// IPAMInfosRead while it reads them but sends unsigned ones (not
	// every member reads them yet); IPAMInfosSigned once it sends its
	// infos signed, for good. Old nodes ignore the field.
	IPAMInfos int `json:"ii,omitempty"`
	// IPAMDeltas is the version of the IPAM's ring-change deltas the node
	// reads (docs/ipam.md, "Deltas"): absent (0) on a node of the
	// previous release, which drops them unread, so that while one is a
	// member every node announces its ring changes by whole states.
	IPAMDeltas int `json:"dl,omitempty"`
	// IPAMJoining is the version of the IPAM's Joining flag the node
	// reads (docs/ipam.md, "Joining as a voter"): absent (0) on a node of
	// the previous release, which drops the flag and so would refuse the
	// signed info that carries it, so that while one is a member a peer
	// that joins votes at once, as before. IPAMOwnedVersion: it also
	// reads the owned spans of peer infos; IPAMAcksVersion, also their
	// acknowledged removals; IPAMVouchesVersion, also their vouches.
	IPAMJoining int `json:"jn,omitempty"`
	// Sig signs the metadata bytes before it together with the node's name
	// and advertised address (signedMetaBytes). It is always the last
	// field on the wire; set by SignMeta only.
	Sig string `json:"sg,omitempty"`
}

// Values of Meta.IPAMInfos.
const (
	IPAMInfosRead   = 1
	IPAMInfosSigned = 2
)

// Values of Meta.IPAMDeltas: IPAMDeltasVersion, a node that reads deltas;
// IPAMDigestsVersion, one that also reads state digests in push/pull
// (docs/ipam.md, "Digests at rest"). The second rides on the field of the
// first rather than a field of its own: the metadata has 512 bytes.
const (
	IPAMDeltasVersion  = 1
	IPAMDigestsVersion = 2
)

// Values of Meta.IPAMJoining: IPAMJoiningVersion, a node that reads the
// Joining flag; IPAMOwnedVersion, one that also reads the owned spans of
// peer infos (docs/ipam.md, "Signed ring transfers"); IPAMAcksVersion,
// one that also reads their acknowledged removals ("Dropping
// tombstones"); IPAMVouchesVersion, one that also reads their vouches
// ("Vouched reclaims"). The later ones ride on the field of the first, as digests
// ride on deltas: the metadata has 512 bytes.
const (
	IPAMJoiningVersion = 1
	IPAMOwnedVersion   = 2
	IPAMAcksVersion    = 3
	IPAMVouchesVersion = 4
)

// PathMetaVersion is the format of PathMeta; a node that reads a higher
// one treats the sender as if it sent none.
const PathMetaVersion = 1

// MaxMetaDown bounds PathMeta.Down, which keeps the metadata under
// MetaLimit; a node with more broken paths sets Overflow instead.
const MaxMetaDown = 12

// PathMeta is a node's report of its direct paths: the probe target others
// use to test their direct path to it, the peers whose direct path it
// currently sees down, and whether it refuses to relay.
type PathMeta struct {
	Version int `json:"v"`
	// Probe is the address others probe through their direct WireGuard
	// path to this node: its overlay IP. Empty until it has one.
	Probe string `json:"o,omitempty"`
	// Down names the peers whose direct path this node sees down; every
	// other peer it reaches directly (or has not been told of yet).
	Down []string `json:"d,omitempty"`
	// Overflow means more paths are down than Down can list: the node's
	// view is unknown, so it is neither relayed to nor through.
	Overflow bool `json:"x,omitempty"`
	// NoRelay means the node refuses to carry traffic between others
	// (--no-relay).
	NoRelay bool `json:"n,omitempty"`
	// Preference is the node's --relay-preference, 0 when absent. Added
	// within version 1: a node of the first release of path reports
	// ignores the unknown field and ranks relays by name alone.
	Preference int `json:"f,omitempty"`
	// Coord is the node's network coordinate in its wire form
	// (coord.Coordinate.Wire), from which every node estimates the
	// latency of any link for the relay choice (docs/routing.md).
	// Added within version 1: earlier nodes ignore it, and while one of
	// them reports, latency counts for nobody. A wire form of the wrong
	// length is dropped on decoding; its bounds are the reader's check
	// (coord.FromWire).
	Coord []int `json:"c,omitempty"`
	// E2E is this node's end-to-end address (docs/routing.md, "End to
	// end through relays"): a second address of its own space, where its
	// end-to-end device listens inside the mesh. Empty when it has none
	// (--relay-end-to-end=false, no address yet); a pair is relayed end
	// to end only when both ends have one. Added within version 1: an
	// earlier node ignores it and relays hop by hop.
	E2E string `json:"e,omitempty"`
}

// Equal reports whether p and q are the same report.
func (p PathMeta) Equal(q PathMeta) bool {
	return p.EqualBesidesCoord(q) && slices.Equal(p.Coord, q.Coord)
}

// EqualBesidesCoord reports whether p and q differ at most in their
// network coordinate: the one rule for a change of the coordinate alone,
// which its publisher logs quietly and its receivers reconcile lazily.
func (p PathMeta) EqualBesidesCoord(q PathMeta) bool {
	return p.Version == q.Version && p.Probe == q.Probe && p.E2E == q.E2E && slices.Equal(p.Down, q.Down) &&
		p.Overflow == q.Overflow && p.NoRelay == q.NoRelay && p.Preference == q.Preference
}

// MaxRelayPreference bounds PathMeta.Preference both ways; a received
// value beyond it counts as the bound.
const MaxRelayPreference = 100

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
	if m.Paths != nil && len(m.Paths.Down) > MaxMetaDown {
		return nil, fmt.Errorf("node metadata lists %d broken paths, more than %d", len(m.Paths.Down), MaxMetaDown)
	}
	if m.SignKey != "" && m.Sig == "" {
		// The signature is appended later; it must fit too, so
		// that WithPaths shortens the path report to make room.
		if len(b)+sigOverhead > MetaLimit {
			return nil, fmt.Errorf("node metadata is %d bytes with its signature, more than memberlist's limit of %d", len(b)+sigOverhead, MetaLimit)
		}
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
	if p := m.Paths; p != nil {
		switch {
		case p.Version != PathMetaVersion:
			// A later format: its meaning is unknown here.
			m.Paths = nil
		case len(p.Down) > MaxMetaDown:
			// Cutting the list would claim paths the sender does
			// not have.
			p.Down, p.Overflow = nil, true
		}
		if len(p.Coord) != coord.WireLen {
			p.Coord = nil
		}
		if p.Preference > MaxRelayPreference {
			p.Preference = MaxRelayPreference
		} else if p.Preference < -MaxRelayPreference {
			p.Preference = -MaxRelayPreference
		}
	}
	return m, nil
}

// withRelayFields returns m with the gossip relay fields the membership
// sends: the envelope version it reads and, with a gossip key (keyed),
// the authenticated one.
func (m Meta) withRelayFields(keyed bool) Meta {
	m.GossipRelay, m.GossipRelayAuth = int(relayVersion), 0
	if keyed {
		m.GossipRelayAuth = int(relayAuthVersion)
	}
	return m
}

// WithPaths returns m carrying p, with p's Down list replaced by Overflow
// when it is longer than MaxMetaDown or the metadata would not fit
// MetaLimit: the node then says it does not know, rather than claim a path
// it does not have by listing only some of its broken ones. Before that,
// the node gives up its coordinate (latency then counts in nobody's relay
// choice until it has room again, which costs a better choice, not a
// path), then a node behind NAT gives up its PublicAddr (and PublicPort), the one field it can do
// without (the others then reach its data plane where its own packets
// come from, WireGuard's roaming), and it gives it up for good when even
// the overflowed report leaves no room; then the oldest key IDs.
func (m Meta) WithPaths(p PathMeta) Meta {
	p.Version = PathMetaVersion
	m.Paths = &p
	if m.fits() {
		return m
	}
	p.Coord = nil
	if m.fits() {
		return m
	}
	if public, port := m.PublicAddr, m.PublicPort; public != "" {
		m.PublicAddr, m.PublicPort = "", 0
		if m.fits() {
			return m
		}
		m.PublicAddr, m.PublicPort = public, port
	}
	p.Down, p.Overflow = nil, true
	m.Paths = &p
	if !m.fits() {
		m.PublicAddr, m.PublicPort = "", 0
	}
	// A node behind NAT must announce its home. With the most keys a
	// rotation can leave installed and long names there is no room, so
	// the oldest key IDs go (newest first, so a pair still finds the
	// newest key both hold; only a peer that holds none but the dropped
	// ones, several rotations behind, would miss its preshared key).
	for !m.fits() && len(m.Keys) > 1 {
		m.Keys = m.Keys[:len(m.Keys)-1]
	}
	return m
}

// fits says whether m fits MetaLimit as sent: with the gossip relay
// fields the membership adds (New, UpdateMeta) and the signature's
// version SignMeta adds.
func (m Meta) fits() bool {
	sent := m.withRelayFields(true)
	if sent.SignKey != "" {
		sent.SigVersion = MetaSigVersion
	}
	_, err := sent.Encode()
	return err == nil
}
