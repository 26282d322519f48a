package api

// MemberState is a member's state in the mesh, as membership reports it and
// status shows it. The state names are defined here once; every package
// that needs them uses these constants.
type MemberState string

const (
	MemberAlive   MemberState = "alive"
	MemberSuspect MemberState = "suspect" // one of this node's probes failed
	MemberDead    MemberState = "dead"
	MemberLeft    MemberState = "left" // it left gracefully
)

// MemberStates lists every member state, in the order status shows them.
var MemberStates = []MemberState{MemberAlive, MemberSuspect, MemberDead, MemberLeft}

// Live says whether a member in state s counts as reachable: alive, or
// suspect, since suspicion is often a gossip hiccup and dropping the member
// would cut its pods off for nothing. This is the one definition of the rule.
func (s MemberState) Live() bool { return s == MemberAlive || s == MemberSuspect }

// ConnState is the state of the data-plane link to one peer.
type ConnState string

const (
	// ConnEstablished: a handshake within the last 3 minutes.
	ConnEstablished ConnState = "established"
	ConnConnecting  ConnState = "connecting"
	ConnFailed      ConnState = "failed"
)

// ConnStates lists every connection state, in the order status shows them.
var ConnStates = []ConnState{ConnEstablished, ConnConnecting, ConnFailed}

// PathState is whether the direct data-plane path to a peer works, as this
// node's probes through it find (docs/routing.md).
type PathState string

const (
	// PathUp: probes through the direct WireGuard path are answered.
	PathUp PathState = "up"
	// PathDown: they have not been for a while; the peer's ranges go
	// through a relay when one reaches it.
	PathDown PathState = "down"
)

// Reachability is whether other members can connect to this node's gossip
// address, as the check at launch found (docs/routing.md, "Nodes behind
// NAT").
type Reachability string

const (
	// ReachUnchecked: no check ran (--behind-nat=false, or no peer named
	// at launch) or no peer answered one.
	ReachUnchecked Reachability = "unchecked"
	// ReachChecking: a check is under way.
	ReachChecking Reachability = "checking"
	// ReachDirect: a peer connected to this node's advertised address.
	ReachDirect Reachability = "reachable"
	// ReachBehindNAT: a peer could not, so this node attaches to a home.
	ReachBehindNAT Reachability = "behind NAT"
	// ReachConfigured: run with --behind-nat; no check.
	ReachConfigured Reachability = "behind NAT (configured)"
)

// BehindNAT says whether a node in reachability r attaches to a home.
func (r Reachability) BehindNAT() bool { return r == ReachBehindNAT || r == ReachConfigured }
