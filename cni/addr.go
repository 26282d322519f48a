package cni

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// netlinkUp is the IFF_UP bit of netlink's LinkAttrs.Flags.
const netlinkUp = net.FlagUp

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// prefixOf converts a net.IPNet, keeping IPv4 addresses 4 bytes long so they
// compare equal to netip's.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	a = a.Unmap()
	if a.Is4() && ones > 32 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}
