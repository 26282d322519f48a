package ipam

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Config configures an Allocator. The zero value is not usable; start from
// DefaultConfig.
type Config struct {
	// Range is the cluster range: an IPv4 prefix of /1 to /30, or an IPv6
	// prefix of /1 to /126 (not IPv4-mapped). Of an IPv6 range larger than
	// 2^48 addresses only the lowest /80 is split among the peers
	// (docs/ipam.md, "IPv6 cluster ranges"). All peers must use the same
	// one; a peer with another range is reported in Status and its state
	// is never merged. One Allocator serves one family: a dual-stack node
	// runs one per family.
	Range netip.Prefix
	// Self is this peer's name, unique in the mesh.
	Self string
	// SelfID is a random identifier generated once per installation and
	// stable across restarts. It tells a re-installed node (same name, state
	// file lost) from the old one in Status.
	SelfID string
	// StateFile is where the ring, this peer's allocations and its bootstrap
	// votes are kept. Empty keeps everything in memory (tests only).
	StateFile string
	// InitialPeerCount is the number of peers expected to form the cluster
	// at bootstrap, this one included: the daemon passes len(named peers)+1.
	// The first split needs the agreement of a majority of that many peers;
	// 1 (no peer named) lets this peer seed the ring alone at once.
	InitialPeerCount int
	// ReclaimAfter, when positive, lets the cluster take back the free space
	// of a peer not heard of for that long (see docs/ipam.md). It must be
	// the same on all peers. 0 disables automatic reclaim.
	ReclaimAfter time.Duration
	// Logger receives conflicts and state changes. Nil discards.
	Logger *slog.Logger
	// Now is the clock; tests inject a fake one. Nil means time.Now.
	Now func() time.Time
	// IsMember says whether name is a live member of the mesh. A peer
	// name first heard of in a remote state is accepted only if it is a
	// member, owns space, or was removed (docs/ipam.md, bounds), so that
	// a peer holding the key cannot fill the table with invented names.
	// A donor also gives space to a member SetMembers has not reported
	// yet. Nil counts every name as a member for the first rule and leaves
	// the donor to SetMembers' view alone.
	IsMember func(name string) bool
	// Identities signs this peer's infos and verifies those of others
	// (docs/ipam.md, "Signed peer infos"). Nil: infos are neither signed
	// nor checked, as in the previous release (tests, simulations).
	Identities Identities
	// Deltas says whether every member reads ring-change deltas
	// (docs/ipam.md, "Deltas"), so that this peer may announce its ring
	// changes by them rather than by its whole state. Called under the
	// allocator's lock: it must not block nor call the Allocator. Nil:
	// never (a node of the previous release drops deltas unread).
	Deltas func() bool
	// Digests says whether every member reads state digests in push/pull
	// (docs/ipam.md, "Digests at rest"), so that this peer may answer a
	// push/pull that is no join with a digest of its state rather than the
	// state. Called under the allocator's lock: it must not block nor call
	// the Allocator. Nil: never (a node of the previous release would
	// refuse a digest as a corrupt state).
	Digests func() bool
	// Admission says whether every member reads the Joining flag of peer
	// infos (docs/ipam.md, "Joining as a voter"), so that a peer that
	// joins a running mesh with ReclaimAfter set votes only once every
	// peer it knows holds its info. Called under the allocator's lock: it
	// must not block nor call the Allocator; consulted when this peer adopts a
	// ring it did not seed or finds itself removed while alive. Nil: never
	// (a joiner votes at once, as in the previous release).
	Admission func() bool
	// ListOwned says whether every member reads the owned spans of peer
	// infos (docs/ipam.md, "Signed ring transfers"), so that this peer may
	// list its space in its infos; from the first true on (with
	// Identities, once this peer also sends signed states) it lists it for
	// good. Called under the allocator's lock: it must not block nor call
	// the Allocator. Nil: never (a node of the previous release would take
	// the list for the next field of the info).
	ListOwned func() bool
	// AckRemovals says whether every member reads the acknowledged
	// removals of peer infos (docs/ipam.md, "Dropping tombstones"), so
	// that this peer may list the tombstones it holds and drop those every
	// peer has acknowledged; from the first true on (with Identities, once
	// this peer also sends signed states) for good. Called under the
	// allocator's lock: it must not block nor call the Allocator. Nil:
	// never (a node of the previous release would take the list for the
	// next field of the info).
	AckRemovals func() bool
	// VouchReclaims says whether every member reads the vouches of peer
	// infos (docs/ipam.md, "Vouched reclaims"), so that this peer may
	// list the silent peers it vouches for, and mark its own space as one
	// that moves by reclaim only with the vouches of a majority; from the
	// first true on (with Identities, once this peer also sends signed
	// states) for good. Called under the allocator's lock: it must not
	// block nor call the Allocator. Nil: never.
	VouchReclaims func() bool
}

// DefaultConfig returns a Config with the default cluster range and a single
// expected peer. Callers fill in Self, SelfID and StateFile.
func DefaultConfig() Config {
	return Config{
		Range:            netip.MustParsePrefix("10.32.0.0/12"),
		StateFile:        "/var/lib/mesh/ipam.json",
		InitialPeerCount: 1,
		Now:              time.Now,
	}
}

// Errors returned by the Allocator. They are wrapped with detail; test with
// errors.Is.
var (
	// ErrNoSpace means no reachable peer has a free address to give.
	ErrNoSpace = errors.New("ipam: no free address in the cluster range reachable from this peer")
	// ErrNotReady means the call gave up (its context ended) before the
	// ring was seeded or space arrived.
	ErrNotReady = errors.New("ipam: no address available yet")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("ipam: allocator closed")
	// ErrRangeMismatch means a remote state is for another cluster range.
	ErrRangeMismatch = errors.New("ipam: peer uses a different cluster range")
	// ErrCorruptState means a state file or a remote state could not be
	// decoded.
	ErrCorruptState = errors.New("ipam: corrupt state")
)

func (c *Config) validate() error {
	if err := checkRange(c.Range); err != nil {
		return err
	}
	c.Range = c.Range.Masked()
	if c.Self == "" {
		return errors.New("ipam: Config.Self is empty")
	}
	if len(c.Self) > maxName {
		return fmt.Errorf("ipam: peer name %q is longer than %d bytes", c.Self, maxName)
	}
	if c.InitialPeerCount < 1 {
		c.InitialPeerCount = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Prefix lengths a cluster range may have, per family: the shortest
// (largest) and the longest (smallest). The smallest ranges still leave a
// pod address beside the gateway.
const (
	minRangeBits  = 1
	maxRangeBits4 = 30
	maxRangeBits6 = 126
)

// checkRange says why p cannot be a cluster range, naming it.
func checkRange(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("ipam: cluster range %v is not a valid prefix", p)
	case p.Addr().Is4In6():
		return fmt.Errorf("ipam: cluster range %v is an IPv4-mapped IPv6 prefix: give the IPv4 range %v instead", p, unmap(p))
	case p.Addr().Is4() && (p.Bits() < minRangeBits || p.Bits() > maxRangeBits4):
		return fmt.Errorf("ipam: IPv4 cluster range %v must have a prefix length between %d and %d", p, minRangeBits, maxRangeBits4)
	case p.Addr().Is6() && (p.Bits() < minRangeBits || p.Bits() > maxRangeBits6):
		return fmt.Errorf("ipam: IPv6 cluster range %v must have a prefix length between %d and %d", p, minRangeBits, maxRangeBits6)
	}
	return nil
}

// unmap is the IPv4 prefix an IPv4-mapped IPv6 prefix stands for (for
// the error message only).
func unmap(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(p.Addr().Unmap(), max(0, p.Bits()-96))
}
