// Package fastdp is mesh's data plane: a WireGuard device (the kernel module
// when the host has it, wireguard-go otherwise), a bridge for the pods of this
// node, and the routes between them, all behind one idempotent Set.
//
// fastdp knows nothing of gossip or IPAM. The caller (package peer) computes
// the whole desired state as a Config and hands it to Set, which makes the
// host match it, touching only what differs, in the style of tailscale's
// router.
//
// # Addressing
//
// The bridge (default "mesh") holds the node's overlay IP as a host prefix
// (/32 or /128, Config.BridgeAddr). Putting the whole cluster range on the
// bridge, as Weave does, would make the kernel add a connected route for the
// cluster range through the bridge, which collides with the route through
// the WireGuard device. With a host prefix the routes are all explicit:
//
//	ClusterRange   dev <wg device>  src <overlay IP>   # the rest of the cluster
//	LocalRanges[i] dev <bridge>     src <overlay IP>   # pods of this node
//	LocalHosts[i]  dev <bridge>     src <overlay IP>   # this node's pods outside LocalRanges
//	RemoteHosts[i] dev <wg device>  src <overlay IP>   # other nodes' pods inside LocalRanges
//
// Longest-prefix match sends traffic for this node's own ranges to the bridge
// and everything else in the cluster range into WireGuard, whose AllowedIPs
// (the ranges each peer owns) pick the peer. Host prefixes override the
// ranges for single addresses whose holder is not the range's owner: a
// peer's AllowedIPs then carry the host prefix too, and WireGuard, like the
// kernel, picks the longest match. The preferred source is the
// overlay IP because the WireGuard device has no address of its own, and the
// receiving peer drops packets whose source is outside the sender's
// AllowedIPs; the overlay IP must therefore lie inside one of this node's
// LocalRanges, or be a host prefix the peers allow for this node. Pods use the overlay IP as their gateway (the CNI plugin adds
// an on-link route to it, as the bridge address is a host prefix).
//
// With Config.Inner, a second WireGuard device carries the traffic of
// peers reached through a relay end to end, inside the first (see Inner).
//
// Every route fastdp installs carries protocol RouteProtocol, and every link
// it creates carries an alias starting with "mesh:", so that Set can find and
// remove its own stale state and Reset can remove all of it without touching
// anything else.
package fastdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/meshnet/mesh/crypto"
)

const (
	// DefaultListenPort is the UDP port of the data plane.
	DefaultListenPort = 6784
	// DefaultDeviceName is the name of the WireGuard link.
	DefaultDeviceName = "mesh-wg"
	// DefaultBridgeName is the name of the bridge holding the local pods.
	DefaultBridgeName = "mesh"
	// DefaultMTU is used when Config.MTU is zero: a 1500-byte underlay minus
	// Overhead.
	DefaultMTU = 1500 - Overhead
	// Overhead is what WireGuard adds to every packet in the worst case, an
	// IPv6 underlay: 40 (IPv6) + 8 (UDP) + 16 (WireGuard header) + 16 (tag).
	Overhead = 80
	// MinMTU and MaxMTU bound the overlay MTU. 1280 is the IPv6 minimum;
	// below it the overlay could not carry IPv6.
	MinMTU = 1280
	MaxMTU = 65535
	// RouteProtocol marks the routes fastdp installs (rtm_protocol). 109 is
	// unassigned in iproute2's rt_protos and spells 'm'.
	RouteProtocol = 109

	// ModeAuto uses the kernel module when it is there, wireguard-go if not.
	ModeAuto = "auto"
	// ModeKernel requires the kernel module.
	ModeKernel = "kernel"
	// ModeUserspace always runs wireguard-go (where: Options.Process).
	ModeUserspace = "userspace"

	// DefaultInnerDeviceName is the name of the end-to-end device
	// (Config.Inner).
	DefaultInnerDeviceName = "mesh-e2e"
	// DefaultInnerListenPort is the UDP port of the end-to-end device. Its
	// packets travel inside the outer device's, between overlay
	// addresses, so it is never seen on the underlay.
	DefaultInnerListenPort = 6785

	// ProcessAuto runs the userspace data plane in a mesh-dataplane
	// process: the one serving the UAPI socket, else one started from
	// Options.ProcessBinary (in this process, with a warning, when that
	// program is missing).
	ProcessAuto = "auto"
	// ProcessExternal uses a mesh-dataplane process that a supervisor
	// (systemd, a DaemonSet) runs, and never starts one.
	ProcessExternal = "external"
	// ProcessOff runs wireguard-go in this process.
	ProcessOff = "off"
)

// ProcessBinaryName is the data-plane program: wireguard-go on the TUN
// device and its UAPI socket, nothing else (cmd/mesh-dataplane, which runs
// Serve). It lives next to the mesh binary.
const ProcessBinaryName = "mesh-dataplane"

// ProcessStatus is what this process knows of the data-plane process.
type ProcessStatus struct {
	// Mode is ProcessAuto or ProcessExternal.
	Mode string
	// PID of the process serving the UAPI socket, 0 when none does (or it
	// is in a PID namespace this process cannot see).
	PID int
	// Up is set while the process answers on its UAPI socket.
	Up bool
	// Restarts counts the times this daemon found the process gone (or
	// replaced) and configured a new one.
	Restarts int
}

// ErrKernelUnavailable is wrapped by New when ModeKernel is asked for on a
// host without the WireGuard kernel module.
var ErrKernelUnavailable = errors.New("kernel WireGuard is not available on this host")

// Config is the desired state of the data plane. Set makes the host match it.
type Config struct {
	// PrivateKey is the node's WireGuard private key (crypto.PrivateKey.Bytes()).
	PrivateKey crypto.Key
	// ListenPort is the UDP port WireGuard listens on; 0 means DefaultListenPort.
	ListenPort int
	// MTU of the WireGuard device and of the bridge; 0 means DefaultMTU.
	MTU int
	// Peers, conventionally sorted by PublicKey (Equal compares in order).
	Peers []Peer
	// BridgeName is the bridge for local pods; "" means DefaultBridgeName.
	BridgeName string
	// BridgeAddr is the node's overlay IP as a host prefix (/32 or /128),
	// and the source of the routes. The zero value (a node that owns no
	// range yet) leaves the bridge without an address and the routes
	// without a preferred source.
	BridgeAddr netip.Prefix
	// LocalRanges are the ranges this node owns; they are routed to the bridge.
	LocalRanges []netip.Prefix
	// LocalHosts are host prefixes (/32 or /128) routed to the bridge
	// although no LocalRange holds them: addresses of this node's pods in
	// space another node owns. Sorted, disjoint from RemoteHosts.
	LocalHosts []netip.Prefix
	// RemoteHosts are host prefixes routed through the WireGuard device
	// although a LocalRange holds them: addresses of another node's pods
	// in space this node owns (that node's AllowedIPs carry them). Sorted.
	RemoteHosts []netip.Prefix
	// ClusterRange is routed through the WireGuard device.
	ClusterRange netip.Prefix
	// ClusterRange6 is the IPv6 cluster range of a dual-stack mesh
	// (ClusterRange is then the IPv4 one): routed through the WireGuard
	// device too, with IPv6 forwarding on. LocalRanges, LocalHosts and
	// RemoteHosts may lie in either range. BridgeAddr6 is the node's IPv6
	// overlay address (a /128 inside ClusterRange6, on the bridge beside
	// BridgeAddr, without duplicate address detection) and the source of
	// the IPv6 routes. Both zero in an IPv4-only or IPv6-only mesh.
	ClusterRange6 netip.Prefix
	BridgeAddr6   netip.Prefix
	// Inner is the end-to-end device; nil means none (one left by an
	// earlier Set is removed).
	Inner *Inner
}

// Inner is a second WireGuard device whose packets travel inside the first
// one's, between the two nodes' end-to-end addresses, so that a node
// relaying them (which decrypts the outer layer) sees only the inner
// layer's ciphertext and cannot forge the inner layer's sources
// (docs/routing.md, "End to end through relays"). It uses the node's key
// (Config.PrivateKey) and its MTU is the outer device's minus Overhead.
//
// Routing, with Addr this node's end-to-end address:
//
//	Routes[i] dev <inner device> src <overlay IP>   # peers reached end to end
//	Pins[i]   dev <wg device>    src <Addr>          # the peers' end-to-end addresses
//	Direct[i] dev <wg device>    src <overlay IP>   # the peers' probe addresses
//
// A pin keeps a peer's end-to-end address on the outer device although a
// Route covers it (longest-prefix match), so that the inner packets leave
// by the outer device instead of looping into the inner one, and from
// Addr, which the peers allow on the outer entry that carries them.
type Inner struct {
	// DeviceName is the link's name; "" means DefaultInnerDeviceName.
	DeviceName string
	// ListenPort is the inner device's UDP port; 0 means
	// DefaultInnerListenPort. It must differ from the outer one's.
	ListenPort int
	// Addr is this node's end-to-end address, a host prefix inside the
	// cluster range held by this node (so that peers route it here). It
	// is put on the inner device; the inner packets leave from it.
	Addr netip.Prefix
	// Peers of the inner device: Endpoint is the peer's end-to-end
	// address and inner port, AllowedIPs what the peer's outer entry
	// would allow. Sorted by PublicKey.
	Peers []Peer
	// Routes are routed into the inner device. Sorted. One may hold Addr
	// (it is held in another node's range): local addresses are looked
	// up before the main table.
	Routes []netip.Prefix
	// Pins are the peers' end-to-end addresses (host prefixes), routed
	// into the outer device with Addr as the source. Sorted.
	Pins []netip.Prefix
	// Direct are host prefixes inside Routes kept on the outer device
	// from the overlay IP: the peers' probe addresses, whose probes must
	// test the direct path, not the path through the relay. Sorted.
	Direct []netip.Prefix
}

// innerMTU is the MTU of the inner device under an outer device of mtu.
func innerMTU(mtu int) int { return mtu - Overhead }

// clusterRangeOf returns the cluster range of a's family.
func (c *Config) clusterRangeOf(a netip.Addr) netip.Prefix {
	if c.ClusterRange6.IsValid() && a.Is6() {
		return c.ClusterRange6
	}
	return c.ClusterRange
}

// bridgeAddrOf returns the bridge address of a's family.
func (c *Config) bridgeAddrOf(a netip.Addr) netip.Prefix {
	if c.ClusterRange6.IsValid() && a.Is6() {
		return c.BridgeAddr6
	}
	return c.BridgeAddr
}

// Peer is one remote node.
type Peer struct {
	PublicKey    crypto.Key
	PresharedKey crypto.Key
	// Endpoint is the peer's underlay address; the zero value means unknown
	// (the peer has to contact us first).
	Endpoint netip.AddrPort
	// AllowedIPs are the overlay ranges the peer owns, and host prefixes
	// of its pods' addresses in space another node owns.
	AllowedIPs []netip.Prefix
	// Keepalive is the persistent keepalive interval; 0 turns it off.
	Keepalive time.Duration
}

// PeerStats is the observed state of one peer.
type PeerStats struct {
	PublicKey     crypto.Key
	Endpoint      netip.AddrPort
	LastHandshake time.Time
	RxBytes       int64
	TxBytes       int64
}

// Dataplane is the data plane of one node.
type Dataplane interface {
	// Kind is "kernel", "userspace", or "none" for None.
	Kind() string
	// Set makes the host match cfg. It is idempotent and changes only what
	// differs; when it fails it removes what it created in that call.
	Set(ctx context.Context, cfg *Config) error
	// Stats reports the WireGuard peers as the device sees them.
	Stats(ctx context.Context) ([]PeerStats, error)
	// Close stops this process's part of the data plane but leaves the
	// interfaces and routes in place, so that pods keep their addresses
	// through a daemon restart and the next New+Set adopts them.
	Close() error
}

// Options select and place the implementation.
type Options struct {
	// Mode is ModeAuto, ModeKernel or ModeUserspace.
	Mode string
	// DeviceName is the WireGuard link's name (at most 15 bytes).
	DeviceName string
	// Logger receives the data plane's logs; nil discards them.
	Logger *slog.Logger
	// NetNSPath is the network namespace to work in, such as
	// /var/run/netns/x; "" means that of the thread calling New (or Reset).
	NetNSPath string
	// Process says where wireguard-go runs on the userspace path:
	// ProcessAuto, ProcessExternal or ProcessOff ("" means ProcessOff).
	Process string
	// ProcessBinary is the mesh-dataplane program ProcessAuto starts.
	ProcessBinary string
	// ProcessArgs are passed to it after the device's (e.g. --log-level).
	ProcessArgs []string
}

// DefaultOptions returns the options of a normal daemon.
func DefaultOptions() Options {
	return Options{Mode: ModeAuto, DeviceName: DefaultDeviceName, Logger: slog.Default()}
}

func (o *Options) normalize() error {
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	switch o.Mode {
	case ModeAuto, ModeKernel, ModeUserspace:
	default:
		return fmt.Errorf("unknown data plane mode %q (want %s, %s or %s)", o.Mode, ModeAuto, ModeKernel, ModeUserspace)
	}
	if o.DeviceName == "" {
		o.DeviceName = DefaultDeviceName
	}
	switch o.Process {
	case "":
		o.Process = ProcessOff
	case ProcessAuto, ProcessExternal, ProcessOff:
	default:
		return fmt.Errorf("unknown data plane process mode %q (want %s, %s or %s)", o.Process, ProcessAuto, ProcessExternal, ProcessOff)
	}
	if err := validLinkName(o.DeviceName); err != nil {
		return err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func validLinkName(name string) error {
	// IFNAMSIZ is 16 including the terminating NUL.
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return fmt.Errorf("invalid interface name %q: want 1 to 15 bytes", name)
	}
	for _, c := range name {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("invalid interface name %q: contains %q", name, c)
		}
	}
	return nil
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	if c == nil {
		return nil
	}
	n := *c
	n.LocalRanges = slices.Clone(c.LocalRanges)
	n.LocalHosts = slices.Clone(c.LocalHosts)
	n.RemoteHosts = slices.Clone(c.RemoteHosts)
	n.Peers = clonePeers(c.Peers)
	if c.Inner != nil {
		in := *c.Inner
		in.Peers = clonePeers(c.Inner.Peers)
		in.Routes = slices.Clone(c.Inner.Routes)
		in.Pins = slices.Clone(c.Inner.Pins)
		in.Direct = slices.Clone(c.Inner.Direct)
		n.Inner = &in
	}
	return &n
}

func clonePeers(ps []Peer) []Peer {
	if ps == nil {
		return nil
	}
	out := make([]Peer, len(ps))
	for i, p := range ps {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		out[i] = p
	}
	return out
}

// Equal reports whether c and o describe the same state, comparing slices in
// order (Desired produces them sorted).
func (c *Config) Equal(o *Config) bool {
	if c == nil || o == nil {
		return c == o
	}
	if c.PrivateKey != o.PrivateKey || c.ListenPort != o.ListenPort || c.MTU != o.MTU ||
		c.BridgeName != o.BridgeName || c.BridgeAddr != o.BridgeAddr || c.ClusterRange != o.ClusterRange ||
		c.BridgeAddr6 != o.BridgeAddr6 || c.ClusterRange6 != o.ClusterRange6 ||
		!slices.Equal(c.LocalRanges, o.LocalRanges) || !slices.Equal(c.LocalHosts, o.LocalHosts) ||
		!slices.Equal(c.RemoteHosts, o.RemoteHosts) || !equalPeers(c.Peers, o.Peers) {
		return false
	}
	if c.Inner == nil || o.Inner == nil {
		return c.Inner == o.Inner
	}
	a, b := c.Inner, o.Inner
	return a.DeviceName == b.DeviceName && a.ListenPort == b.ListenPort && a.Addr == b.Addr &&
		equalPeers(a.Peers, b.Peers) && slices.Equal(a.Routes, b.Routes) && slices.Equal(a.Pins, b.Pins) &&
		slices.Equal(a.Direct, b.Direct)
}

func equalPeers(x, y []Peer) bool {
	return slices.EqualFunc(x, y, func(a, b Peer) bool {
		return a.PublicKey == b.PublicKey && a.PresharedKey == b.PresharedKey && a.Endpoint == b.Endpoint &&
			a.Keepalive == b.Keepalive && slices.Equal(a.AllowedIPs, b.AllowedIPs)
	})
}

// Validate reports whether Set would accept c (after filling in defaults).
func (c *Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults returns a copy of c with the zero fields that have defaults
// filled in, after checking that it is a configuration Set can apply.
func (c *Config) withDefaults() (*Config, error) {
	if c == nil {
		return nil, errors.New("invalid data plane config: nil")
	}
	n := c.Clone()
	if n.ListenPort == 0 {
		n.ListenPort = DefaultListenPort
	}
	if n.MTU == 0 {
		n.MTU = DefaultMTU
	}
	if n.BridgeName == "" {
		n.BridgeName = DefaultBridgeName
	}
	if in := n.Inner; in != nil {
		if in.DeviceName == "" {
			in.DeviceName = DefaultInnerDeviceName
		}
		if in.ListenPort == 0 {
			in.ListenPort = DefaultInnerListenPort
		}
	}
	if err := n.validate(); err != nil {
		return nil, fmt.Errorf("invalid data plane config: %w", err)
	}
	return n, nil
}

// ValidMTU says whether the data plane accepts mtu as the overlay MTU. The
// daemon validates --mtu with it so that a value the data plane would refuse
// fails at start, not at every reconcile.
func ValidMTU(mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU {
		return fmt.Errorf("MTU %d out of range [%d, %d]", mtu, MinMTU, MaxMTU)
	}
	return nil
}

func (c *Config) validate() error {
	if c.PrivateKey == (crypto.Key{}) {
		return errors.New("private key is zero")
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		return fmt.Errorf("listen port %d out of range", c.ListenPort)
	}
	if err := ValidMTU(c.MTU); err != nil {
		return err
	}
	if err := validLinkName(c.BridgeName); err != nil {
		return fmt.Errorf("bridge: %w", err)
	}
	if !c.ClusterRange.IsValid() || c.ClusterRange != c.ClusterRange.Masked() {
		return fmt.Errorf("cluster range %s is not a valid masked prefix", c.ClusterRange)
	}
	if r := c.ClusterRange6; r.IsValid() || c.BridgeAddr6.IsValid() {
		if !r.IsValid() || r != r.Masked() || !r.Addr().Is6() || !c.ClusterRange.Addr().Is4() {
			return fmt.Errorf("IPv6 cluster range %s beside %s is not a masked IPv6 prefix beside an IPv4 one", r, c.ClusterRange)
		}
	}
	for _, a := range []netip.Prefix{c.BridgeAddr, c.BridgeAddr6} {
		if !a.IsValid() {
			continue
		}
		if !a.IsSingleIP() {
			return fmt.Errorf("bridge address %s is not a host prefix (/32 or /128)", a)
		}
		if r := c.clusterRangeOf(a.Addr()); !r.Contains(a.Addr()) || c.bridgeAddrOf(a.Addr()) != a {
			return fmt.Errorf("bridge address %s is outside the cluster range %s", a, r)
		}
	}
	for _, r := range c.LocalRanges {
		if err := c.checkRange("local range", r); err != nil {
			return err
		}
	}
	local := make(map[netip.Prefix]bool, len(c.LocalHosts))
	for _, h := range c.LocalHosts {
		if err := c.checkHost("local host", h); err != nil {
			return err
		}
		local[h] = true
	}
	for _, h := range c.RemoteHosts {
		if err := c.checkHost("remote host", h); err != nil {
			return err
		}
		if local[h] {
			return fmt.Errorf("host %s is both local and remote", h)
		}
	}
	if err := validPeers(c.Peers); err != nil {
		return err
	}
	if c.Inner != nil {
		if err := c.validateInner(); err != nil {
			return fmt.Errorf("end-to-end device: %w", err)
		}
	}
	return nil
}

// checkRange says whether r, named what in the error, is a masked prefix
// inside the cluster range of its family.
func (c *Config) checkRange(what string, r netip.Prefix) error {
	if cr := c.clusterRangeOf(r.Addr()); !r.IsValid() || r != r.Masked() || !cr.Contains(r.Addr()) || r.Bits() < cr.Bits() {
		return fmt.Errorf("%s %s is not a masked prefix inside the cluster range %s", what, r, cr)
	}
	return nil
}

// checkHost says whether h, named what in the error, is a host prefix
// inside the cluster range of its family.
func (c *Config) checkHost(what string, h netip.Prefix) error {
	if cr := c.clusterRangeOf(h.Addr()); !h.IsValid() || !h.IsSingleIP() || !cr.Contains(h.Addr()) {
		return fmt.Errorf("%s %s is not a host prefix inside the cluster range %s", what, h, cr)
	}
	return nil
}

func validPeers(ps []Peer) error {
	seen := make(map[crypto.Key]bool, len(ps))
	for _, p := range ps {
		if p.PublicKey == (crypto.Key{}) {
			return errors.New("peer with a zero public key")
		}
		if seen[p.PublicKey] {
			return fmt.Errorf("peer %s listed twice", p.PublicKey)
		}
		seen[p.PublicKey] = true
		if p.Keepalive < 0 || p.Keepalive > 65535*time.Second {
			return fmt.Errorf("peer %s: keepalive %v out of range", p.PublicKey, p.Keepalive)
		}
		for _, r := range p.AllowedIPs {
			if !r.IsValid() || r != r.Masked() {
				return fmt.Errorf("peer %s: allowed IP %s is not a masked prefix", p.PublicKey, r)
			}
		}
	}
	return nil
}

// validateInner checks c.Inner, with its defaults filled in.
func (c *Config) validateInner() error {
	in := c.Inner
	if err := validLinkName(in.DeviceName); err != nil {
		return err
	}
	if in.DeviceName == c.BridgeName {
		return fmt.Errorf("device name %q is the bridge's", in.DeviceName)
	}
	if in.ListenPort < 1 || in.ListenPort > 65535 || in.ListenPort == c.ListenPort {
		return fmt.Errorf("listen port %d out of range or the outer device's", in.ListenPort)
	}
	// The inner packets must fit the outer device; IPv6 needs 1280.
	low := 576
	if c.ClusterRange.Addr().Is6() || c.ClusterRange6.IsValid() {
		low = MinMTU
	}
	if m := innerMTU(c.MTU); m < low {
		return fmt.Errorf("MTU %d leaves %d for the end-to-end device (at least %d)", c.MTU, m, low)
	}
	if err := c.checkHost("address", in.Addr); err != nil {
		return err
	}
	pinned := make(map[netip.Prefix]bool, len(in.Pins))
	for _, h := range in.Pins {
		if err := c.checkHost("pinned address", h); err != nil {
			return err
		}
		if h == in.Addr {
			return fmt.Errorf("pinned address %s is this node's own", h)
		}
		pinned[h] = true
	}
	for _, h := range in.Direct {
		if err := c.checkHost("direct address", h); err != nil {
			return err
		}
		if pinned[h] {
			return fmt.Errorf("direct address %s is pinned too", h)
		}
	}
	for _, r := range in.Routes {
		if err := c.checkRange("route", r); err != nil {
			return err
		}
	}
	for _, p := range in.Peers {
		// An inner packet to a peer must leave by the outer device:
		// its endpoint is pinned there, or it would loop into the
		// inner device through a route that covers it.
		if a := p.Endpoint.Addr(); !p.Endpoint.IsValid() || !pinned[netip.PrefixFrom(a, a.BitLen())] {
			return fmt.Errorf("peer %s: endpoint %s is not one of the pinned addresses", p.PublicKey, p.Endpoint)
		}
	}
	return validPeers(in.Peers)
}
