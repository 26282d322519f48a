// Package daemon wires membership, IPAM and the data plane together and
// serves the local control API. It is what `mesh launch` runs.
package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/fastdp/nat"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"
)

// Config is the daemon's configuration. Start from DefaultConfig.
type Config struct {
	Name          string
	AdvertiseAddr netip.Addr
	Port          int
	StateDir      string
	Socket        string
	// The mesh's secrets (see docs/architecture.md, "Trust and keys"):
	// KeyFile (from mesh keygen; may hold a new and an old key during a
	// rotation), PasswordFiles (newest first) and Password (MESH_PASSWORD).
	// Files are read again by a rotation. All empty only with Insecure.
	KeyFile       string
	PasswordFiles []string
	Password      []byte
	// MeshName salts the keys of passwords; required with a password, the
	// same on every member.
	MeshName string
	// AllowShortPassword accepts passwords under crypto.MinPasswordLen.
	AllowShortPassword bool
	// AcceptLegacyKey also holds the previous release's key of each
	// password, so that a mesh of that release upgrades node by node.
	AcceptLegacyKey bool
	Insecure        bool
	// Peers are the targets named at launch, as host or host:port.
	Peers   []string
	Version string
	Logger  *slog.Logger

	// IPAllocRange is the cluster range split among the peers: the IPv4
	// one, or the IPv6 one of an IPv6-only mesh.
	IPAllocRange netip.Prefix
	// IPAllocRange6 is the IPv6 cluster range of a dual-stack mesh; the
	// zero value (the default) runs one family only. An IPv6 range gets an
	// allocator with the state file ipam6.json and the gossip channel
	// mesh.ChannelIPAM6, whichever field holds it.
	IPAllocRange6 netip.Prefix
	// ReclaimAfter enables automatic reclaim of silent peers' free space.
	ReclaimAfter time.Duration

	// Dataplane is auto, kernel, userspace, or none (gossip and IPAM only).
	Dataplane string
	DPPort    int
	// MTU of the overlay; 0 detects it from the underlay.
	MTU       int
	Keepalive time.Duration
	Bridge    string
	WGDevice  string
	// DataplaneProcess says where the userspace data plane's wireguard-go
	// runs: fastdp.ProcessAuto (a mesh-dataplane process that outlives the
	// daemon, started from next to this executable when none runs),
	// fastdp.ProcessExternal (one a supervisor runs) or fastdp.ProcessOff
	// (in this process).
	DataplaneProcess string

	// CNI plugin installation; NoCNI turns it off.
	NoCNI      bool
	CNIBinDir  string
	CNIConfDir string

	// MetricsAddr serves /metrics, /healthz and /readyz; empty turns it off.
	MetricsAddr string

	// Kube takes peers and node deletions from the Kubernetes API.
	Kube       bool
	Kubeconfig string
	// NoPolicy turns NetworkPolicy enforcement off (it runs with Kube).
	NoPolicy bool

	// NoMasquerade turns off outbound NAT of pod traffic leaving the
	// cluster range; NoMasqueradeCIDRs are destinations never masqueraded.
	NoMasquerade      bool
	NoMasqueradeCIDRs []netip.Prefix

	// NoRelay: this node never carries traffic between two other nodes
	// whose direct path is down (docs/routing.md).
	NoRelay bool
	// RelayEndToEnd: this node takes an end-to-end address and talks to
	// peers it reaches through a relay inside a second WireGuard layer
	// the relay cannot read (docs/routing.md). On by default.
	RelayEndToEnd bool
	// BehindNAT: this node can only connect out; others reach its gossip
	// through the member it attaches to (docs/routing.md, "Nodes behind
	// NAT").
	BehindNAT bool
	// NATCheck, without BehindNAT, asks a peer named at launch to connect
	// back to this node's gossip address, and behaves as BehindNAT when it
	// cannot (docs/routing.md, "Nodes behind NAT"). On by default.
	NATCheck bool
	// ReachRecheck is how often the reachability check runs again after
	// its first verdict (docs/routing.md, "Nodes behind NAT"): a node that
	// came to sit behind NAT or a firewall attaches to a home, one that is
	// reachable again detaches. 0 never checks again.
	ReachRecheck time.Duration
	// GossipTiming is memberlist's set of timings (mesh.TimingLAN, the
	// default, or mesh.TimingWAN; docs/scale.md, "Settings that matter").
	GossipTiming mesh.Timing
	// RelayPreference: among relay paths of equal hops and latency, the others prefer
	// those through nodes with a higher value (docs/routing.md); from
	// -MaxRelayPreference to MaxRelayPreference.
	RelayPreference int

	// NoPortIsolation turns the bridge's port isolation and the underlay
	// source check off (for benchmarks and debugging only).
	NoPortIsolation bool
	// PolicyWait bounds how long an ADD waits for the pod's NetworkPolicy
	// rules before it fails (with --kube and policy on).
	PolicyWait time.Duration
}

// DefaultConfig returns the defaults documented in `mesh launch --help`.
func DefaultConfig() Config {
	return Config{
		Port:         mesh.DefaultPort,
		StateDir:     "/var/lib/mesh",
		Socket:       api.DefaultSocket,
		Version:      "dev",
		Logger:       slog.Default(),
		IPAllocRange: netip.MustParsePrefix("10.32.0.0/12"),
		Dataplane:    fastdp.ModeAuto,
		DPPort:       fastdp.DefaultListenPort,
		Keepalive:    25 * time.Second,
		Bridge:       fastdp.DefaultBridgeName,
		WGDevice:     fastdp.DefaultDeviceName,
		// The data plane outlives a restart of the daemon.
		DataplaneProcess: fastdp.ProcessAuto,
		CNIBinDir:        api.DefaultCNIBinDir,
		CNIConfDir:       api.DefaultCNIConfDir,
		MetricsAddr:      "127.0.0.1:6782",
		PolicyWait:       10 * time.Second,
		NATCheck:         true,
		RelayEndToEnd:    true,
		ReachRecheck:     mesh.DefaultConfig().ReachRecheck,
		GossipTiming:     mesh.TimingLAN,
	}
}

// DataplaneNone runs the daemon without a data plane.
const DataplaneNone = fastdp.ModeNone

// hasDataplane reports whether this node runs a data plane: without one
// (--dataplane none) nothing on the host is touched, so no bridge, NAT,
// port isolation or conntrack flush either.
func (c *Config) hasDataplane() bool { return c.Dataplane != DataplaneNone }

// ErrNoPassword is returned when neither a password nor --insecure is given.
var ErrNoPassword = errors.New("no mesh password: give --key-file FILE (made with mesh keygen), or --password-file FILE or MESH_PASSWORD with --mesh-name, or run with --insecure to gossip unencrypted")

// hasSecret reports whether any mesh secret is configured.
func (c *Config) hasSecret() bool {
	return c.KeyFile != "" || len(c.PasswordFiles) > 0 || len(c.Password) > 0
}

// hasPassword reports whether a password is configured.
func (c *Config) hasPassword() bool { return len(c.PasswordFiles) > 0 || len(c.Password) > 0 }

func (c *Config) path(name string) string { return filepath.Join(c.StateDir, name) }

// ipv4Range is the IPv4 cluster range; the zero value in an IPv6-only
// mesh.
func (c *Config) ipv4Range() netip.Prefix {
	if c.IPAllocRange.Addr().Is4() {
		return c.IPAllocRange
	}
	return netip.Prefix{}
}

// ipv6Range is the IPv6 cluster range, of a dual-stack or an IPv6-only
// mesh; the zero value in an IPv4-only one.
func (c *Config) ipv6Range() netip.Prefix {
	if c.IPAllocRange6.IsValid() {
		return c.IPAllocRange6
	}
	if c.IPAllocRange.Addr().Is6() {
		return c.IPAllocRange
	}
	return netip.Prefix{}
}

// ipv6Only reports whether the mesh runs IPv6 alone.
func (c *Config) ipv6Only() bool { return !c.ipv4Range().IsValid() }

// probeRange is the cluster range of the probe addresses: the first one
// (IPAllocRange), whose allocator (d.ipam) gives the overlay IP each node
// publishes as its probe address. That is IPv4 in an IPv4-only or a
// dual-stack mesh, where one probe per peer tests the path for both
// families (docs/routing.md), and IPv6 in an IPv6-only one.
func (c *Config) probeRange() netip.Prefix { return c.IPAllocRange }

// MinReachRecheck is the shortest --reach-recheck: each round costs a TCP
// connection each way with a peer.
const MinReachRecheck = 5 * time.Second

// Validate checks the configuration and normalises peer addresses.
func (c *Config) Validate() error {
	if !c.hasSecret() && !c.Insecure {
		return ErrNoPassword
	}
	if c.hasPassword() {
		if err := crypto.CheckMeshName(c.MeshName); err != nil {
			return err
		}
	}
	if c.AcceptLegacyKey && !c.hasPassword() {
		return errors.New("--accept-legacy-key needs the password (--password-file or MESH_PASSWORD): the previous release derived its key from it")
	}
	if c.RelayPreference < -mesh.MaxRelayPreference || c.RelayPreference > mesh.MaxRelayPreference {
		return fmt.Errorf("--relay-preference must be from %d to %d", -mesh.MaxRelayPreference, mesh.MaxRelayPreference)
	}
	if c.ReachRecheck < 0 || (c.ReachRecheck > 0 && c.ReachRecheck < MinReachRecheck) {
		return fmt.Errorf("--reach-recheck must be 0 (never) or at least %v", MinReachRecheck)
	}
	if err := c.GossipTiming.Check(); err != nil {
		return fmt.Errorf("--gossip-timing: %w", err)
	}
	if c.Port < 1 || c.Port > 65535 {
		return errors.New("--port must be from 1 to 65535")
	}
	if c.DPPort < 1 || c.DPPort > 65535 {
		return errors.New("--dp-port must be from 1 to 65535")
	}
	if c.MTU != 0 {
		// The data plane's own bounds: a value it would refuse at every
		// reconcile must fail here, at start.
		if err := fastdp.ValidMTU(c.MTU); err != nil {
			return fmt.Errorf("--mtu: %w (or 0 to detect)", err)
		}
	}
	switch c.Dataplane {
	case fastdp.ModeAuto, fastdp.ModeKernel, fastdp.ModeUserspace, DataplaneNone:
	default:
		return fmt.Errorf("unknown --dataplane %q (want auto, kernel, userspace or none)", c.Dataplane)
	}
	switch c.DataplaneProcess {
	case fastdp.ProcessAuto, fastdp.ProcessExternal, fastdp.ProcessOff:
	default:
		return fmt.Errorf("unknown --dataplane-process %q (want %s, %s or %s)", c.DataplaneProcess,
			fastdp.ProcessAuto, fastdp.ProcessExternal, fastdp.ProcessOff)
	}
	if c.IPAllocRange.IsValid() && c.IPAllocRange.Addr().Is6() && !c.IPAllocRange.Addr().Is4In6() && !c.IPAllocRange6.IsValid() {
		// IPv6 only: the IPAM's own bounds (size, host bits), with its
		// wording.
		if _, err := ipam.ParseClusterRanges([]string{c.IPAllocRange.String()}); err != nil {
			return err
		}
	} else {
		if !c.IPAllocRange.IsValid() || !c.IPAllocRange.Addr().Is4() || c.IPAllocRange.Bits() > 30 {
			return fmt.Errorf("--ipalloc-range %v must be an IPv4 prefix of /30 or larger", c.IPAllocRange)
		}
		if c.IPAllocRange != c.IPAllocRange.Masked() {
			return fmt.Errorf("--ipalloc-range %v has host bits set (did you mean %v?)", c.IPAllocRange, c.IPAllocRange.Masked())
		}
	}
	if c.IPAllocRange6.IsValid() {
		if !c.IPAllocRange6.Addr().Is6() || c.IPAllocRange6.Addr().Is4In6() {
			return fmt.Errorf("the second --ipalloc-range %v must be an IPv6 prefix (one range per address family)", c.IPAllocRange6)
		}
		// The IPAM's own bounds (size, host bits), with its wording.
		if _, err := ipam.ParseClusterRanges([]string{c.IPAllocRange6.String()}); err != nil {
			return err
		}
	}
	if len(c.NoMasqueradeCIDRs) > nat.MaxNoMasquerade {
		return fmt.Errorf("--no-masquerade-cidrs lists %d CIDRs, at most %d", len(c.NoMasqueradeCIDRs), nat.MaxNoMasquerade)
	}
	for _, p := range c.NoMasqueradeCIDRs {
		if !p.IsValid() || p.Addr().Is4In6() || p != p.Masked() {
			return fmt.Errorf("--no-masquerade-cidrs: %v is not an IPv4 or IPv6 prefix without host bits", p)
		}
	}
	if c.PolicyWait < 0 {
		return fmt.Errorf("--policy-wait %v must not be negative", c.PolicyWait)
	}
	if c.PolicyWait == 0 {
		c.PolicyWait = DefaultConfig().PolicyWait
	}
	for i, p := range c.Peers {
		a, err := mesh.ParsePeerAddress(p, c.Port)
		if err != nil {
			return err
		}
		c.Peers[i] = a
	}
	return nil
}

// SetIPAllocRanges sets the cluster ranges from the values of
// --ipalloc-range (each a CIDR or a comma list, at most one per family;
// ipam.ParseClusterRanges): IPv4 in IPAllocRange and IPv6 in
// IPAllocRange6, or an IPv6 range alone in IPAllocRange (IPv6 only).
func (c *Config) SetIPAllocRanges(values []string) error {
	r, err := ipam.ParseClusterRanges(values)
	if err != nil {
		return err
	}
	c.IPAllocRange, c.IPAllocRange6 = r.IPv4, r.IPv6
	if !r.IPv4.IsValid() {
		c.IPAllocRange, c.IPAllocRange6 = r.IPv6, netip.Prefix{}
	}
	return nil
}
