// Package ipam is mesh's IP address manager: it splits the cluster range
// among peers, hands out pod addresses from the ranges this peer owns, and
// persists everything so a SIGKILL loses nothing.
//
// The ownership state is a state-based CRDT (see docs/ipam.md): every address
// of the cluster range carries a (version, owner) register and merging two
// states takes, address by address, the larger register. Only the current
// owner of an address writes its next version, so replicas never disagree
// about who owns what except while a transfer is in flight, and during that
// window the giver has already stopped using the space.
//
// The package does no networking of its own: the daemon gives it a Transport,
// feeds it membership through SetMembers, full states through
// MergeRemoteState and messages through HandleMessage, and calls Tick every
// second.
package ipam
