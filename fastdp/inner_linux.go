package fastdp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// aliasInner marks the end-to-end device (Config.Inner), so that Set finds
// one left under an earlier name and Reset removes it with the rest.
const aliasInner = aliasPrefix + "wireguard-e2e"

// innerDevice is the end-to-end device's part of a dataplane; its fields
// are guarded by dataplane.mu.
type innerDevice struct {
	impl wgImpl // nil while no inner device runs in this process
	name string // the device impl serves
	// last is what the device was last brought to, as a Config of its
	// own (key, port, peers), for wgDiff's endpoint rule.
	last *Config
	// release, when set, is the pending pass that gives the peers added
	// by holdFirstKeepalives their keepalive.
	release *time.Timer
}

// stop stops what the inner device runs in this process (the link stays)
// and forgets it.
func (in *innerDevice) stop() error {
	if in.release != nil {
		in.release.Stop()
	}
	var err error
	if in.impl != nil {
		err = in.impl.close()
	}
	*in = innerDevice{}
	return err
}

// ensureInner brings the end-to-end device to want.Inner: the link (the
// kernel module where the outer device is one, wireguard-go in this
// process otherwise), its key, port and peers, its MTU, its address and a
// loose reverse-path filter. It returns the link, nil when want has no
// inner device; a device of another name, or one no longer wanted, is
// removed.
func (d *dataplane) ensureInner(want *Config, undo *undoStack) (netlink.Link, error) {
	keep := ""
	if want.Inner != nil {
		keep = want.Inner.DeviceName
	}
	if err := d.removeStaleInner(keep); err != nil {
		return nil, err
	}
	in := want.Inner
	if in == nil {
		return nil, nil
	}
	if d.inner.impl == nil {
		if d.impl.kind() == ModeKernel {
			d.inner.impl = &kernelImpl{name: in.DeviceName, nl: d.nl}
		} else {
			// In this process also when the outer device runs in a
			// data-plane process (docs/routing.md says what that
			// costs a restart).
			d.inner.impl = &userspaceImpl{name: in.DeviceName, ns: d.ns, nl: d.nl, log: d.log.With("inner", in.DeviceName)}
		}
		d.inner.name, d.inner.last = in.DeviceName, nil
	}
	mtu := innerMTU(want.MTU)
	link, u, err := d.inner.impl.ensure(mtu)
	if err != nil {
		return nil, fmt.Errorf("end-to-end device: %w", err)
	}
	undo.push(fmt.Sprintf("remove link %q", in.DeviceName), u)

	dev := &Config{PrivateKey: want.PrivateKey, ListenPort: in.ListenPort, Peers: in.Peers}
	if err := d.configureInner(dev, true); err != nil {
		return nil, err
	}
	if err := d.ensureLinkState(link, mtu, aliasInner); err != nil {
		return nil, err
	}
	if err := d.ensureLinkAddrs(link, "end-to-end device", []netip.Prefix{in.Addr}, undo); err != nil {
		return nil, err
	}
	if err := d.looseReversePath(in.DeviceName); err != nil {
		return nil, err
	}
	return link, nil
}

// releaseInnerKeepalives brings the inner device to its last config
// again, which gives the peers holdFirstKeepalives held back their
// keepalive (and so starts their handshake, unless the other end's came
// through meanwhile).
func (d *dataplane) releaseInnerKeepalives() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.inner.release = nil
	if d.closed || d.inner.impl == nil || d.inner.last == nil {
		return
	}
	if err := d.configureInner(d.inner.last, false); err != nil {
		d.log.Warn("failed to set the keepalive of the end-to-end device's new peers; the next Set retries", "inner", d.inner.name, "err", err)
	}
}

// configureInner brings the inner device's key, port and peers to dev
// (d.mu held). With hold, new peers wait for their keepalive as on the
// outer device: the two ends of a pair turn end to end within a reconcile
// of each other, and only the smaller key initiates at once, so that an
// initiation that finds the other end not ready yet is followed by the
// other end's own (its keepalive) instead of WireGuard's 5 s retry.
func (d *dataplane) configureInner(dev *Config, hold bool) error {
	name := d.inner.name
	cur, err := d.wg.Device(name)
	if err != nil {
		return fmt.Errorf("failed to read WireGuard device %q: %w", name, err)
	}
	change, changed := wgDiff(cur, dev, d.inner.last)
	if !changed {
		d.inner.last = dev
		return nil
	}
	held := 0
	if hold {
		change, held = holdFirstKeepalives(change, wgtypes.Key(dev.PrivateKey).PublicKey())
	}
	if err := d.wg.ConfigureDevice(name, change); err != nil {
		return fmt.Errorf("failed to configure WireGuard device %q: %w", name, err)
	}
	d.inner.last = dev
	if held > 0 && d.inner.release == nil {
		d.inner.release = time.AfterFunc(firstHandshakeStagger, d.releaseInnerKeepalives)
	}
	// Counts only: the change holds the private and preshared keys.
	d.log.Info("configured the end-to-end device", "inner", name, "changes", len(change.Peers), "peers", len(dev.Peers))
	return nil
}

// looseReversePath sets the IPv4 reverse-path filter of the inner device to
// loose. A peer that relays this node while this node reaches it directly
// sends its pods' packets in by the inner device, while this node routes
// replies to them by the outer one: a strict filter (some distributions'
// default, and the kernel takes the larger of the device's and "all")
// would drop them. The inner layer's AllowedIPs check their sources
// instead. IPv6 has no such filter.
func (d *dataplane) looseReversePath(dev string) error {
	path := "/proc/sys/net/ipv4/conf/" + dev + "/rp_filter"
	_, err := d.ensureSysctl(path, "2")
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil // IPv4 off in this namespace
	case err != nil:
		return fmt.Errorf("failed to set %s to loose: %w", path, err)
	}
	return nil
}

// removeStaleInner stops the end-to-end device this process runs unless it
// is keep, and removes every link marked as one but keep ("" removes all).
// The routes through a removed link go with it; the pins go with the next
// ensureRoutes.
func (d *dataplane) removeStaleInner(keep string) error {
	if d.inner.impl != nil && d.inner.name != keep {
		name := d.inner.name
		if err := d.inner.stop(); err != nil {
			return fmt.Errorf("failed to stop end-to-end device %q: %w", name, err)
		}
	}
	links, err := dump(d.nl.LinkList)
	if err != nil {
		return fmt.Errorf("failed to list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Alias != aliasInner || a.Name == keep {
			continue
		}
		if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("failed to remove end-to-end device %q: %w", a.Name, err)
		}
		d.log.Info("removed the end-to-end device", "inner", a.Name)
	}
	return nil
}

// InnerStats reports the peers of the end-to-end device as it sees them;
// none without one.
func (d *dataplane) InnerStats(ctx context.Context) ([]PeerStats, error) {
	return d.deviceStats(ctx, func() string {
		if d.inner.impl == nil {
			return ""
		}
		return d.inner.name
	})
}
