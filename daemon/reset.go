package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/meshnet/mesh/cni/install"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/fastdp/nat"
	"github.com/meshnet/mesh/fastdp/relayed"
	"github.com/meshnet/mesh/isolation"
	"github.com/meshnet/mesh/policy"
)

// ResetOptions says what Reset removes.
type ResetOptions struct {
	// Socket is the daemon's control socket: Reset refuses while a daemon
	// answers on it.
	Socket string
	// WGDevice is the WireGuard device of the data plane.
	WGDevice string
	// CNIBinDir and CNIConfDir are where the plugin and its conflist were
	// installed.
	CNIBinDir, CNIConfDir string
	// StateDir is emptied (identity, keys, IPAM allocations) when
	// RemoveState is set: the node then comes back as a new peer.
	StateDir    string
	RemoveState bool
}

// DefaultResetOptions returns the options matching DefaultConfig.
func DefaultResetOptions() ResetOptions {
	def := DefaultConfig()
	return ResetOptions{Socket: def.Socket, WGDevice: def.WGDevice, CNIBinDir: def.CNIBinDir, CNIConfDir: def.CNIConfDir, StateDir: def.StateDir}
}

// Reset undoes what mesh did to this host: the data plane's interfaces and
// routes, the nftables tables, the installed CNI files and, with
// RemoveState, the state dir. It works without a running daemon and refuses
// while a daemon still runs the data plane. It blocks until done or ctx
// ends. The CLI's `mesh reset` is a thin caller of it, so the CLI needs
// none of the packages that own these objects.
func Reset(ctx context.Context, o ResetOptions) error {
	// A kernel data plane has no socket of its own that would tell that a
	// daemon still runs it (fastdp.Reset checks wireguard-go's), and a
	// running daemon would not notice its link gone until its config
	// changed: ask for the daemon itself.
	if o.Socket != "" {
		if c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "unix", o.Socket); err == nil {
			c.Close()
			return fmt.Errorf("the mesh daemon is still running (%s answers); stop it first", o.Socket)
		}
	}
	opts := fastdp.DefaultOptions()
	opts.DeviceName = o.WGDevice
	if err := fastdp.Reset(ctx, opts); err != nil {
		return fmt.Errorf("failed to reset the data plane: %w", err)
	}
	if err := policy.NewNFT().Remove(); err != nil {
		return fmt.Errorf("failed to remove the NetworkPolicy table: %w", err)
	}
	if err := nat.New().Remove(); err != nil {
		return fmt.Errorf("failed to remove the NAT table: %w", err)
	}
	if err := relayed.New().Remove(); err != nil {
		return fmt.Errorf("failed to remove the relayed-traffic counter's table: %w", err)
	}
	if err := isolation.New().Remove(); err != nil {
		return fmt.Errorf("failed to remove the port-isolation tables: %w", err)
	}
	if err := install.Remove(o.CNIBinDir, o.CNIConfDir); err != nil {
		return err
	}
	if o.RemoveState {
		if err := emptyDir(o.StateDir); err != nil {
			return err
		}
	}
	return nil
}

// emptyDir removes what is in dir but not dir itself, which is often a
// mount point (a hostPath volume, a bind mount) that cannot be removed.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to read state dir %q: %w", dir, err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("failed to remove %q: %w", p, err)
		}
	}
	return nil
}
