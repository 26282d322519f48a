package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshnet/mesh/cni"
	"github.com/meshnet/mesh/isolation"
)

// isolationCheck is how often the isolation tables are compared with the
// live ruleset (and restored if something changed them).
const isolationCheck = 2 * time.Second

// startIsolation programs the port-isolation tables from the allocations
// of this node and keeps them in step. It needs the bridge, so it runs only
// with a data plane.
func (d *Daemon) startIsolation() {
	if d.dp == nil {
		return
	}
	if d.cfg.NoPortIsolation {
		if err := isolation.New().Remove(); err != nil {
			d.log.Warn("failed to remove the port-isolation tables", "error", err)
		}
		d.log.Warn("port isolation is off (--no-port-isolation): pods can spoof addresses on this node's bridge")
		return
	}
	d.iso = isolation.New()
	if err := d.syncIsolation(); err != nil {
		d.log.Error("failed to program the port-isolation tables; retrying", "error", err)
	}
	d.goLoop("isolation", func(ctx context.Context) {
		t := time.NewTicker(isolationCheck)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := d.syncIsolation(); err != nil {
				d.log.Error("failed to program the port-isolation tables; retrying", "error", err)
			}
		}
	})
}

// isolationConfig is the desired content of the tables: a port per
// allocation of this node.
func (d *Daemon) isolationConfig() isolation.Config {
	cfg := isolation.Config{Bridge: d.cfg.Bridge, PortPrefix: cni.HostVethPrefix, Trusted: []string{d.cfg.WGDevice}, ClusterRange: d.cfg.IPAllocRange}
	for _, a := range d.ipam.List() {
		if !a.Addr.Is4() {
			continue
		}
		cfg.Ports = append(cfg.Ports, isolation.Port{Name: cni.HostVethName(a.ContainerID, a.IfName), MAC: isolation.MACFor(a.Addr), Addr: a.Addr})
	}
	return cfg
}

// syncIsolation applies the tables if the allocations changed or if the
// live tables differ from what was applied (a flushed ruleset); the latter
// is counted and logged. No-op without isolation.
func (d *Daemon) syncIsolation() error {
	if d.iso == nil {
		return nil
	}
	d.isoMu.Lock()
	defer d.isoMu.Unlock()
	want := d.isolationConfig()
	prev, applied := d.iso.Applied()
	if applied && prev.String() == want.String() {
		ok, err := d.iso.Intact()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		d.mu.Lock()
		d.isoRestores++
		d.mu.Unlock()
		d.log.Warn("the port-isolation tables were changed or deleted outside mesh; restoring them", "table", isolation.TableName)
	}
	if err := d.iso.Apply(want); err != nil {
		return fmt.Errorf("failed to apply the port-isolation tables: %w", err)
	}
	return nil
}

// flushConntrack deletes the connection-tracking entries of a released
// address: established flows must not reach the next pod that gets it.
func (d *Daemon) flushConntrack(addr netip.Addr) {
	if d.dp == nil || !addr.IsValid() {
		return
	}
	ip := net.IP(addr.AsSlice())
	var filters []netlink.CustomConntrackFilter
	for _, k := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP, netlink.ConntrackReplyAnyIP} {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIP(k, ip); err != nil {
			d.log.Warn("failed to build a conntrack filter", "address", addr, "error", err)
			return
		}
		filters = append(filters, f)
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	if err != nil {
		d.log.Warn("failed to flush the conntrack entries of a released address", "address", addr, "error", err)
		return
	}
	if n > 0 {
		d.log.Debug("flushed conntrack entries of a released address", "address", addr, "entries", n)
	}
}

// isolationCounters reads the tables' drop counters; nil without isolation.
func (d *Daemon) isolationCounters() map[string]uint64 {
	if d.iso == nil {
		return nil
	}
	c, err := d.iso.Counters()
	if err != nil {
		d.log.Warn("failed to read the port-isolation counters", "error", err)
		return nil
	}
	return c
}
