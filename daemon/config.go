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
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/mesh"
)

// Config is the daemon's configuration. Start from DefaultConfig.
type Config struct {
	Name          string
	AdvertiseAddr netip.Addr
	Port          int
	StateDir      string
	Socket        string
	// Password derives every shared key. Empty only with Insecure.
	Password []byte
	Insecure bool
	// Peers are the targets named at launch, as host or host:port.
	Peers   []string
	Version string
	Logger  *slog.Logger

	// IPAllocRange is the cluster range split among the peers.
	IPAllocRange netip.Prefix
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
		CNIBinDir:    "/opt/cni/bin",
		CNIConfDir:   "/etc/cni/net.d",
		MetricsAddr:  "127.0.0.1:6782",
		PolicyWait:   10 * time.Second,
	}
}

// DataplaneNone runs the daemon without a data plane.
const DataplaneNone = "none"

// ErrNoPassword is returned when neither a password nor --insecure is given.
var ErrNoPassword = errors.New("no mesh password: give --password-file FILE or set MESH_PASSWORD, or run with --insecure to gossip unencrypted")

func (c *Config) path(name string) string { return filepath.Join(c.StateDir, name) }

// Validate checks the configuration and normalises peer addresses.
func (c *Config) Validate() error {
	if len(c.Password) == 0 && !c.Insecure {
		return ErrNoPassword
	}
	if c.Port < 1 || c.Port > 65535 {
		return errors.New("--port must be from 1 to 65535")
	}
	if c.DPPort < 1 || c.DPPort > 65535 {
		return errors.New("--dp-port must be from 1 to 65535")
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf("--mtu %d is out of range (576 to 65535, or 0 to detect)", c.MTU)
	}
	switch c.Dataplane {
	case fastdp.ModeAuto, fastdp.ModeKernel, fastdp.ModeUserspace, DataplaneNone:
	default:
		return fmt.Errorf("unknown --dataplane %q (want auto, kernel, userspace or none)", c.Dataplane)
	}
	if !c.IPAllocRange.IsValid() || !c.IPAllocRange.Addr().Is4() || c.IPAllocRange.Bits() > 30 {
		return fmt.Errorf("--ipalloc-range %v must be an IPv4 prefix of /30 or larger", c.IPAllocRange)
	}
	if c.IPAllocRange != c.IPAllocRange.Masked() {
		return fmt.Errorf("--ipalloc-range %v has host bits set (did you mean %v?)", c.IPAllocRange, c.IPAllocRange.Masked())
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
