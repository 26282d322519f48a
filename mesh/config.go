package mesh

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port, TCP and UDP, as in Weave Net.
const DefaultPort = 6783

// Config configures a Membership. Start from DefaultConfig.
type Config struct {
	// Name is this node's name, unique in the mesh.
	Name string
	// Meta is gossiped to every other node.
	Meta Meta
	// BindAddr is the address to listen on; the zero value means all.
	BindAddr netip.Addr
	// AdvertiseAddr is the address other nodes use to reach this one; the
	// zero value lets memberlist pick the address of an interface.
	AdvertiseAddr netip.Addr
	// Port is the gossip port, TCP and UDP.
	Port int
	// GossipKey is the AES-256-GCM key. Nil means no encryption, which the
	// daemon allows only with --insecure.
	GossipKey []byte
	// SecondaryGossipKeys are further keys accepted for incoming gossip
	// (during a key rotation or an upgrade); GossipKey encrypts.
	SecondaryGossipKeys [][]byte
	// Label is put on every packet and stream, so that two meshes on one
	// network never merge even if they shared a key.
	Label string
	// Targets are the peers named at launch, as host:port.
	Targets []string
	// BehindNAT says this node can only connect out (a host behind a
	// masquerading router): it attaches to a home, the first target or
	// live member that accepts it, and others reach it through that
	// member (nathome.go).
	BehindNAT bool
	// DetectNAT, when BehindNAT is not set, has the node ask a peer named
	// at launch to connect back to its gossip address, and behave as with
	// BehindNAT when the peer cannot (natcheck.go).
	DetectNAT bool
	// ReachRecheck is how often the reachability check runs again after
	// its first verdict, with DetectNAT or BehindNAT: a reachable node
	// that has come to sit behind NAT then attaches to a home, and a node
	// behind NAT whose router's public address changed announces the new
	// one. 0 never checks again.
	ReachRecheck time.Duration
	// RememberedFile persists the addresses of peers learned through gossip
	// so that a restart can rejoin through any of them. Empty disables it.
	RememberedFile string
	// RetryMin and RetryMax bound the backoff between join attempts.
	RetryMin, RetryMax time.Duration
	// PushPullInterval is how often a node exchanges its whole state (the
	// membership and the IPAM's) with a random member; memberlist
	// lengthens it past 32 members. Zero means DefaultPushPullInterval.
	PushPullInterval time.Duration
	// RejoinSpread spreads the first attempt to rejoin a target whose
	// member was connected and went dead: it comes at a random point of
	// RejoinSpread after RetryMin, so that a member that is only slow
	// (a false death, which it refutes through gossip with no join) is
	// not redialled by every other node at once (see targets.markLocked).
	RejoinSpread time.Duration
	// SigningKey is the node's long-term identity (identity.
	// LoadOrCreateSigningKey); it signs the metadata. Nil sends unsigned
	// metadata, as the previous release did (tests only).
	SigningKey ed25519.PrivateKey
	// BindingsFile persists the name → identity bindings. Empty keeps them
	// in memory only (tests).
	BindingsFile string
	// Timing is memberlist's set of failure-detection and gossip timings;
	// "" means TimingLAN.
	Timing Timing
	// Logger receives membership events and memberlist's own log lines.
	Logger *slog.Logger

	// tap is for this package's tests only (gossipTap); nil otherwise.
	tap gossipTap
	// probeInterval and reprobeEvery, when set, replace memberlist's probe
	// interval and reprobeEvery: for this package's tests only.
	probeInterval, reprobeEvery time.Duration
}

// Timing names a set of memberlist's timings (the profiles of memberlist
// and Serf). Nodes of one mesh may run different ones: each times its own
// probes and suspicions.
type Timing string

const (
	// TimingLAN is memberlist's LAN profile, the default: a probe a
	// second with 500 ms for the answer, gossip every 200 ms; a member
	// that stops answering is dead within about 10 s.
	TimingLAN Timing = "lan"
	// TimingWAN is memberlist's WAN profile: a probe every 5 s with 3 s
	// for the answer, gossip every 500 ms, suspicions that last six times
	// as long; a member that stops answering is dead after about a
	// minute. For links of high latency or loss, and for hosts that
	// give each daemon little CPU (many simulated hosts on one machine,
	// docs/scale.md), where a late answer is not a dead member.
	TimingWAN Timing = "wan"
)

// Check says whether t names a set of timings: "", TimingLAN or
// TimingWAN. The one list of them, for New and for the daemon's flag.
func (t Timing) Check() error {
	switch t {
	case "", TimingLAN, TimingWAN:
		return nil
	}
	return fmt.Errorf("unknown gossip timing %q (want %s or %s)", t, TimingLAN, TimingWAN)
}

// applyTiming sets mc, memberlist.DefaultLANConfig, to t's failure-detection
// and gossip timings.
func applyTiming(mc *memberlist.Config, t Timing) error {
	if err := t.Check(); err != nil {
		return err
	}
	if t == TimingWAN {
		w := memberlist.DefaultWANConfig()
		mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult = w.ProbeInterval, w.ProbeTimeout, w.SuspicionMult
		mc.GossipInterval, mc.GossipNodes, mc.GossipToTheDeadTime = w.GossipInterval, w.GossipNodes, w.GossipToTheDeadTime
		mc.TCPTimeout = w.TCPTimeout
	}
	return nil
}

// DefaultPushPullInterval is the push/pull interval of DefaultConfig.
// Full state exchanges repair whatever broadcasts missed, the IPAM ring's
// included; 15 s instead of memberlist's 30 s halves the worst case.
const DefaultPushPullInterval = 15 * time.Second

// DefaultConfig returns a Config for a LAN mesh with the default port and
// backoff. The caller must set Name and Meta.
func DefaultConfig() Config {
	return Config{
		Port:             DefaultPort,
		Label:            "mesh/v1",
		RetryMin:         time.Second,
		RetryMax:         30 * time.Second,
		RejoinSpread:     10 * time.Second,
		PushPullInterval: DefaultPushPullInterval,
		// Often enough that a node moved behind NAT is found before
		// an operator would look, rare enough to cost nothing (one TCP
		// connection each way).
		ReachRecheck: 5 * time.Minute,
		Logger:       slog.Default(),
	}
}
