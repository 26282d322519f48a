package fastdp

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DetectMTU returns the overlay MTU for traffic to dst over the underlay: the
// MTU of the route to dst (or of its outgoing link) minus Overhead. dst is a
// peer's underlay address, or this node's own, in which case the link that
// holds it is used. It works in the namespace of the calling thread.
func DetectMTU(dst netip.Addr) (int, error) {
	if !dst.IsValid() {
		return 0, fmt.Errorf("failed to detect MTU: invalid address")
	}
	dst = dst.Unmap()
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return 0, fmt.Errorf("failed to look up route to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return 0, fmt.Errorf("failed to detect MTU: no route to %s", dst)
	}
	r := routes[0]
	mtu := r.MTU
	if mtu == 0 {
		idx := r.LinkIndex
		if r.Type == unix.RTN_LOCAL {
			// A local address routes through lo; what matters is the
			// link that carries it on the wire.
			if idx, err = linkHolding(dst); err != nil {
				return 0, err
			}
		}
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return 0, fmt.Errorf("failed to look up link %d of the route to %s: %w", idx, dst, err)
		}
		mtu = l.Attrs().MTU
	}
	if mtu-Overhead < MinMTU {
		return 0, fmt.Errorf("underlay MTU %d towards %s is too small for an overlay (need at least %d)", mtu, dst, MinMTU+Overhead)
	}
	return mtu - Overhead, nil
}

func linkHolding(a netip.Addr) (int, error) {
	addrs, err := dump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return 0, fmt.Errorf("failed to list addresses: %w", err)
	}
	for _, x := range addrs {
		if x.IP.Equal(a.AsSlice()) {
			return x.LinkIndex, nil
		}
	}
	return 0, fmt.Errorf("failed to detect MTU: no link holds %s", a)
}
