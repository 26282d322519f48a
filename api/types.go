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

	// OverlayIP is this node's own overlay address, on its bridge: the
	// first usable address of its first range. Empty until it owns one.
	OverlayIP string `json:"overlayIP,omitempty"`
	IPAM      *IPAM  `json:"ipam,omitempty"`
	// OverlayIP6 and IPAM6 are the same for the IPv6 range of a
	// dual-stack mesh (its own ring); absent in an IPv4-only mesh.
	OverlayIP6 string `json:"overlayIP6,omitempty"`
	IPAM6      *IPAM  `json:"ipam6,omitempty"`

	// Dataplane is "kernel", "userspace" or "none" (--dataplane none);
	// MTU is the overlay MTU in use.
	Dataplane   string       `json:"dataplane,omitempty"`
	MTU         int          `json:"mtu,omitempty"`
	Connections []Connection `json:"connections,omitempty"`
	// DataplaneProcess is the process running the userspace data plane
	// when that is not the daemon (mesh-dataplane); absent otherwise.
	DataplaneProcess *DataplaneProcess `json:"dataplaneProcess,omitempty"`
	// RelayedBytes is what this node routed for others (docs/routing.md):
	// the IP packets it forwarded from the WireGuard device back into it,
	// since the counter's nftables table was created.
	RelayedBytes int64 `json:"relayedBytes,omitempty"`
	// GossipRelay counts the gossip this node sent through relays and
	// forwarded for others (docs/routing.md, "Gossip through relays").
	GossipRelay *GossipRelay `json:"gossipRelay,omitempty"`

	// Policies are the NetworkPolicies enforced on this node, when the
	// policy controller runs (with --kube).
	Policies []PolicyStatus `json:"policies,omitempty"`

	// Problems are conditions outside the IPAM that an operator must look
	// at (the IPAM's own are in ipam.problems).
	Problems []string `json:"problems,omitempty"`

	// KeyIDs are the IDs (never the keys) of the mesh keys this node
	// holds, newest first; GossipKeyID is the one gossip is encrypted with.
	KeyIDs      []string `json:"keyIDs,omitempty"`
	GossipKeyID string   `json:"gossipKeyID,omitempty"`
	// PublicKey is this node's WireGuard public key.
	PublicKey string `json:"publicKey,omitempty"`
}

// GossipRelay counts memberlist packets and streams that went through a
// relay, since the daemon started.
type GossipRelay struct {
	// Sent: to members this node reaches only through a relay.
	Sent uint64 `json:"sent"`
	// Forwarded: for other members, towards their target.
	Forwarded uint64 `json:"forwarded"`
	// Dropped: envelopes refused (malformed, TTL spent, a target that is
	// no live member, too many streams at once).
	Dropped uint64 `json:"dropped"`
	// Refused: envelopes that failed authentication (a tag no gossip key
	// of this node made, or no tag once no node of the previous release
	// is live): sent by someone without the mesh key.
	Refused uint64 `json:"refused"`
	// Exchanges: state exchanges with a directly reached member, started
	// because some live member had neither a direct path nor a relay.
	Exchanges uint64 `json:"exchanges"`
	// Home is, on a node run with --behind-nat, the member it is attached
	// to ("" while it is not attached: others cannot reach its gossip).
	Home string `json:"home,omitempty"`
	// Attached names the nodes behind NAT attached to this node.
	Attached []string `json:"attached,omitempty"`
	// Reachability says whether others can connect to this node's gossip
	// address (ReachabilityError says why no peer gave a verdict).
	Reachability Reachability `json:"reachability,omitempty"`
	// CheckedBy is the peer that checked, and SeenAs the address that peer
	// saw this node's connection come from (behind NAT, the router's).
	CheckedBy string `json:"checkedBy,omitempty"`
	SeenAs    string `json:"seenAs,omitempty"`
	// ReachabilityError says why no peer gave a verdict.
	ReachabilityError string `json:"reachabilityError,omitempty"`
	// NATPort is, behind NAT, what the peers asked say of the UDP port the
	// NAT gives this node's WireGuard packets (docs/routing.md, "The NAT's
	// port"): NATPortAsking, NATPortKept, NATPortMapped (to PublicPort, which
	// this node announces) or NATPortVaries. Empty when not behind NAT.
	NATPort    NATPortState `json:"natPort,omitempty"`
	PublicPort int          `json:"publicPort,omitempty"`
}

// NATPortState is GossipRelay.NATPort.
type NATPortState string

const (
	// NATPortAsking: no verdict yet (too few peers answered).
	NATPortAsking NATPortState = "asking"
	// NATPortKept: the NAT keeps the WireGuard port.
	NATPortKept NATPortState = "kept"
	// NATPortMapped: the NAT gives it another port, the same for every
	// peer (PublicPort), which this node announces.
	NATPortMapped NATPortState = "mapped"
	// NATPortVaries: the peers saw different ports (a NAT that maps per
	// destination): no port to announce; pairs with other nodes behind
	// NAT are relayed.
	NATPortVaries NATPortState = "varies per peer"
)

// DataplaneProcess is the state of the mesh-dataplane process.
type DataplaneProcess struct {
	// Mode is "auto" (the daemon starts one when none runs) or
	// "external" (a supervisor runs it).
	Mode string `json:"mode"`
	// State is DataplaneProcessUp while it answers on its UAPI socket,
	// else DataplaneProcessDown.
	State string `json:"state"`
	// PID is its process ID, 0 when unknown (down, or in a PID namespace
	// the daemon cannot see).
	PID int `json:"pid,omitempty"`
	// Restarts counts the times the daemon found it gone (or replaced) and
	// configured a new one, since the daemon started.
	Restarts int `json:"restarts"`
}

// States of DataplaneProcess.
const (
	DataplaneProcessUp   = "up"
	DataplaneProcessDown = "down"
)

// IPAM is this node's view of the address ring.
type IPAM struct {
	Range string `json:"range"`
	// Status is "ready" when this node can allocate, "waiting" while the
	// first split is being agreed, or a word naming the problem.
	Status    string   `json:"status"`
	Owned     []string `json:"owned"`
	Allocated int      `json:"allocated"`
	// Free counts the addresses this node can still allocate in the
	// ranges it owns (neither allocated, held by another peer, nor its
	// gateway). A uint64: an IPv6 node owns far more than 2^32.
	Free   uint64      `json:"free"`
	Ranges []RangeInfo `json:"ranges"`
	// Peers summarises ownership per peer, sorted by name.
	Peers []IPAMPeer `json:"peers,omitempty"`
	// Problems are conditions an operator must look at, in plain words.
	Problems []string `json:"problems,omitempty"`
	// Blocked names what this node's IPAM waits for before it can make
	// progress (e.g. "waiting for lease echoes: 1 of 2 voters answered"),
	// empty when nothing waits; BlockedReason is its kind: bootstrap,
	// recovery, lease-echo, space or reclaim-echo.
	Blocked       string `json:"blocked,omitempty"`
	BlockedReason string `json:"blockedReason,omitempty"`
	// SignedStates is this node's switch to IPAM states with signed peer
	// infos (docs/ipam.md, "Signed peer infos"); absent from a daemon of
	// an older release.
	SignedStates *SignedStates `json:"signedStates,omitempty"`
	// StateBytes is the size of this node's whole IPAM state as last sent
	// (a peer refuses one over 1 MiB), Tombstones the removed peers it
	// carries, which are never dropped (docs/ipam.md, "Bounds on what a
	// peer may claim"). Absent when zero, and from an older daemon.
	StateBytes int `json:"stateBytes,omitempty"`
	Tombstones int `json:"tombstones,omitempty"`
	// Deltas says that this node announces its ring changes by deltas
	// (every member reads them, docs/ipam.md "Deltas"); false, by its
	// whole state to every member, as while a member of an older release
	// is in the mesh.
	Deltas bool `json:"deltas,omitempty"`
	// Digests says that this node's push/pull exchanges that are no join
	// carry a digest of its IPAM state rather than the state (every member
	// reads them and automatic reclaim is off, docs/ipam.md "Digests at
	// rest"); false, the whole state.
	Digests bool `json:"digests,omitempty"`
	// OwnedListed says that this node lists the space it owns in its
	// signed IPAM infos, so that every node refuses a ring entry that moves
	// that space without this node's word (docs/ipam.md, "Signed ring
	// transfers"); false until every member reads the list.
	OwnedListed bool `json:"ownedListed,omitempty"`
	// TombstonesAcked says that this node lists the tombstones (removed
	// peers) its IPAM state holds in its signed infos and drops each once
	// every peer has listed it (docs/ipam.md, "Dropping tombstones");
	// false until every member reads the lists. TombstonesDropped counts
	// the tombstones dropped since the daemon started.
	TombstonesAcked   bool `json:"tombstonesAcked,omitempty"`
	TombstonesDropped int  `json:"tombstonesDropped,omitempty"`
	// ReclaimsVouched says that this node lists, in its signed infos,
	// the silent peers it vouches for, and that its own space moves by an
	// automatic reclaim only with the vouches of a majority of the voters
	// (docs/ipam.md, "Vouched reclaims"); false until every member reads
	// the vouches.
	ReclaimsVouched bool `json:"reclaimsVouched,omitempty"`
}

// SignedStates says whether this node sends its IPAM states with signed
// peer infos, and while it does not, what holds it back.
type SignedStates struct {
	// Sending: this node sends its states with signatures; once true, for
	// good.
	Sending bool `json:"sending"`
	// WaitingFor, while Sending is false, lists the members that hold the
	// switch back: those, live or gone for less than 10 minutes, that do
	// not say they read signed states. Empty while Sending is false: no
	// other member is live yet, or the membership is Settling.
	WaitingFor []SignedStatesHolder `json:"waitingFor,omitempty"`
	// Settling, while Sending is false: a member changed state (joined,
	// came back, left) less than 5 seconds ago, and the switch waits for
	// the membership to settle.
	Settling bool `json:"settling,omitempty"`
}

// SignedStatesHolder is a member that holds the switch to signed IPAM
// states back.
type SignedStatesHolder struct {
	Name  string      `json:"name"`
	State MemberState `json:"state"`
	// Reason is HolderPreviousRelease or HolderBadMeta.
	Reason string `json:"reason"`
}

// Reasons of SignedStatesHolder.
const (
	// HolderPreviousRelease: its metadata does not say it reads signed
	// states (a node of the previous release).
	HolderPreviousRelease = "previous release"
	// HolderBadMeta: its gossip metadata does not parse, so nothing it
	// says is known (the daemon logs why).
	HolderBadMeta = "metadata does not parse"
)

// IPAMSections is the output of `mesh status ipam -o json`: the IPAM
// section of Status at the top level, as it always was, and in a
// dual-stack mesh the IPv6 allocator's section beside it under "ipam6"
// (the field name of Status), so an IPv4-only mesh prints exactly what it
// did before.
type IPAMSections struct {
	*IPAM
	IPAM6 *IPAM `json:"ipam6,omitempty"`
}

// RangeInfo is one range of the ring and its owner.
type RangeInfo struct {
	CIDR  string `json:"cidr"`
	Owner string `json:"owner"`
}

// IPAMPeer is how much of the range one peer owns.
type IPAMPeer struct {
	Name      string  `json:"name"`
	Addresses uint64  `json:"addresses"`
	Percent   float64 `json:"percent"`
	Reachable bool    `json:"reachable"`
	// Joining: the peer joined with automatic reclaim on and does not vote
	// yet (docs/ipam.md, "Joining as a voter").
	Joining bool `json:"joining,omitempty"`
	// Removed: the peer was removed (mesh rmpeer, a deleted Kubernetes
	// Node, an automatic reclaim). Reserved counts the addresses it still
	// holds for its pods, which no other node hands out: a deleted Node's
	// until the API lists none of its pods (docs/ipam.md, "Kubernetes
	// Node deletion"). Both absent when zero.
	Removed  bool `json:"removed,omitempty"`
	Reserved int  `json:"reserved,omitempty"`
}

// Connection is the data-plane link to one peer.
type Connection struct {
	Peer     string `json:"peer"`
	Endpoint string `json:"endpoint"`
	// State is established (a handshake within the last 3 minutes),
	// connecting, or failed.
	State         ConnState `json:"state"`
	LastHandshake string    `json:"lastHandshake"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
	// AllowedIPs are the overlay ranges routed to this peer: those it owns,
	// and /32s of addresses it holds in space another peer owns.
	AllowedIPs []string `json:"allowedIPs,omitempty"`
	// DirectPath is up or down: whether probes through the direct path
	// are answered; empty while the peer has no probe address (a node of
	// the previous release, or one without an overlay IP yet).
	DirectPath PathState `json:"directPath,omitempty"`
	// Via names the relay that carries this peer's ranges while its
	// direct path is down; empty when traffic goes direct. AllowedIPs
	// then hold only the peer's probe address, or, end to end, all of
	// its own ranges.
	Via string `json:"via,omitempty"`
	// EndToEnd is set while the peer is relayed and its traffic goes
	// through the relay end to end: inside a second WireGuard layer
	// between this node and the peer, which the relay cannot read
	// (docs/routing.md, "End to end through relays"). Unset while it is
	// relayed hop by hop (the relay decrypts), or direct.
	EndToEnd bool `json:"endToEnd,omitempty"`
	// RTTMillis is the round trip of the last probe answered through the
	// direct path, in milliseconds; absent when none was.
	RTTMillis float64 `json:"rttMillis,omitempty"`
	// EstimatedRTTMillis is the round trip the relay choice uses for the
	// link to this peer: the distance between the two nodes' published
	// network coordinates (docs/routing.md, "Latency"), in
	// milliseconds; absent while either publishes none.
	EstimatedRTTMillis float64 `json:"estimatedRTTMillis,omitempty"`
	// RelayedBytes is what this node routed for others that came from
	// this peer (docs/routing.md): the part of Status.RelayedBytes whose
	// source address is in the peer's own ranges, since the peer's
	// counter was made; absent when none.
	RelayedBytes int64 `json:"relayedBytes,omitempty"`
}

// Peer is one member of the mesh as this node sees it.
type Peer struct {
	Name    string `json:"name"`
	PeerID  string `json:"peerID,omitempty"`
	Address string `json:"address"`
	// State is alive, suspect, dead or left.
	State MemberState `json:"state"`
	Self  bool        `json:"self"`
	// KeyIDs are the mesh key IDs the peer advertises (none for a node of
	// the previous release).
	KeyIDs []string `json:"keyIDs,omitempty"`
	// Identity is the start of the peer's verified signing public key;
	// empty when its metadata is unsigned (a node of the previous release).
	Identity string `json:"identity,omitempty"`
	// PublicAddress is, for a node behind NAT, the public address it
	// announces (its NAT's, as the peer that checked it saw it), where the
	// others send its data plane; empty otherwise (docs/routing.md,
	// "Nodes behind NAT").
	PublicAddress string `json:"publicAddress,omitempty"`
	// PublicPort is, for a node behind NAT whose NAT maps its WireGuard
	// port to another, that port: the others send its data plane to
	// PublicAddress and this port. Zero (absent) means its WireGuard port
	// (docs/routing.md, "The NAT's port").
	PublicPort int `json:"publicPort,omitempty"`
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

// PolicyStatus is one NetworkPolicy applied on this node
// (`mesh status policy`).
type PolicyStatus struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Types     []string `json:"types"`
	// Pods are this node's pods the policy selects, as namespace/name.
	Pods []string `json:"pods"`
	// DeniedPackets counts packets dropped because of this policy alone.
	DeniedPackets uint64   `json:"deniedPackets"`
	Warnings      []string `json:"warnings,omitempty"`
}
