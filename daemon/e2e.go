package daemon

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"
)

// End to end through relays (docs/routing.md): each node holds a second
// address of its own space, its end-to-end address, and publishes it in
// its path report; a pair relayed while both ends have one talks through
// the relay inside a second WireGuard layer between those addresses
// (peer.Desired, fastdp.Inner).

// e2eKey is the IPAM key of this node's end-to-end address: a key of the
// node's own (ipam.Key.Host), held and persisted like a pod's address,
// kept across restarts, and never freed by a CNI DEL or GC.
var e2eKey = ipam.Key{ContainerID: ipam.HostIDPrefix + "e2e", IfName: "e2e"}

// e2eRetry is how long the end-to-end address loop waits after a failed
// allocation (the ring not joined yet, no free space).
const e2eRetry = 5 * time.Second

// e2eAddr holds this node's end-to-end address once allocated.
type e2eAddr struct {
	mu   sync.Mutex
	addr netip.Addr
}

func (e *e2eAddr) get() netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addr
}

func (e *e2eAddr) set(a netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.addr = a
}

// innerDevice is the name of the end-to-end device: mesh-e2e beside the
// default WireGuard device, else the WireGuard device's name (cut to fit)
// and "-e2e", so that two meshes on one host keep theirs apart.
func (c *Config) innerDevice() string {
	if c.WGDevice == fastdp.DefaultDeviceName {
		return fastdp.DefaultInnerDeviceName
	}
	return c.WGDevice[:min(len(c.WGDevice), 11)] + "-e2e"
}

// e2eLoop allocates this node's end-to-end address in the range of its
// probe address (the first cluster range) once it has an overlay IP, and
// kicks a reconcile, which publishes it and uses it.
func (d *Daemon) e2eLoop(ctx context.Context) {
	for {
		if _, ok := d.ipam.OverlayIP(); ok {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			a, err := d.ipam.Allocate(actx, e2eKey.ContainerID, e2eKey.IfName)
			cancel()
			if err == nil {
				d.e2e.set(a)
				d.log.Info("end-to-end address for relayed traffic", "addr", a.String(), "device", d.cfg.innerDevice())
				d.kickReconcile()
				return
			}
			if ctx.Err() == nil {
				d.log.Warn("no end-to-end address yet: relayed traffic goes hop by hop meanwhile", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(e2eRetry):
		}
	}
}

// e2eAddrOf is a member's end-to-end address, if its path report carries
// one in cluster (peer.Desired checks that it lies in the member's own
// space).
func e2eAddrOf(m mesh.Meta, cluster netip.Prefix) (netip.Addr, bool) {
	if m.Paths == nil {
		return netip.Addr{}, false
	}
	return addrIn(m.Paths.E2E, cluster)
}
