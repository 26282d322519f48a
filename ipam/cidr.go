package ipam

import (
	"math/bits"
	"net/netip"
)

// offsetAddr turns an offset inside the cluster range into an address.
func offsetAddr(base netip.Prefix, off uint64) netip.Addr {
	b := base.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(off)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// addrOffset is the inverse of offsetAddr; ok is false outside the range.
func addrOffset(base netip.Prefix, a netip.Addr) (uint64, bool) {
	if !a.Is4() || !base.Contains(a) {
		return 0, false
	}
	x, y := base.Addr().As4(), a.As4()
	bv := uint32(x[0])<<24 | uint32(x[1])<<16 | uint32(x[2])<<8 | uint32(x[3])
	av := uint32(y[0])<<24 | uint32(y[1])<<16 | uint32(y[2])<<8 | uint32(y[3])
	return uint64(av - bv), true
}

// spanCIDRs splits the offsets [s.start, s.end) of the cluster range into the
// fewest CIDR prefixes, lowest first. The cluster range is itself aligned, so
// alignment of offsets is alignment of addresses.
func spanCIDRs(base netip.Prefix, s span) []netip.Prefix {
	var out []netip.Prefix
	for pos := s.start; pos < s.end; {
		// Largest block aligned at pos...
		size := uint64(1) << 32
		if pos != 0 {
			size = uint64(1) << bits.TrailingZeros64(pos)
		}
		// ...that still fits.
		for size > s.end-pos {
			size >>= 1
		}
		p := netip.PrefixFrom(offsetAddr(base, pos), 32-bits.TrailingZeros64(size))
		out = append(out, p)
		pos += size
	}
	return out
}
