package ipam

import (
	"math/bits"
	"net/netip"
)

// maxRingBits6 bounds the ring of an IPv6 cluster range: the ring covers
// the lowest 2^maxRingBits6 addresses of the range (its lowest /80), or
// the whole range when it is smaller. A /64 alone has 2^64 addresses, more
// than an offset can count; 2^48 leaves every count the package keeps
// (free and owned addresses, sums of them, size*i/n at the first split)
// far from overflow, keeps them exact as JSON numbers (below 2^53), and is
// still more pod addresses than any cluster will use. Offsets stay
// addresses, so the ring, Held, the merge and every safety argument are
// the same as for IPv4 (docs/ipam.md, "IPv6 cluster ranges"). Changing it
// changes the meaning of every IPv6 offset: the wire form carries it, and
// a peer with another value is refused (codec.go).
const maxRingBits6 = 48

// ringBits is the number of host bits the ring of the cluster range p
// covers: all of them for IPv4, at most maxRingBits6 for IPv6.
func ringBits(p netip.Prefix) int {
	host := p.Addr().BitLen() - p.Bits()
	if p.Addr().Is6() {
		return min(host, maxRingBits6)
	}
	return host
}

// rangeSize is the number of addresses (offsets) of the ring of p.
func rangeSize(p netip.Prefix) uint64 { return uint64(1) << ringBits(p) }

// ringPrefix is the part of the cluster range p the ring covers: p itself
// for IPv4 and for IPv6 ranges of at most 2^maxRingBits6 addresses, else
// p's lowest /(128-maxRingBits6).
func ringPrefix(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(p.Addr(), p.Addr().BitLen()-ringBits(p)).Masked()
}

// addrWords returns an address as a 128-bit number (IPv4 in the low word).
func addrWords(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return 0, uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	}
	b := a.As16()
	for i := range 8 {
		hi = hi<<8 | uint64(b[i])
		lo = lo<<8 | uint64(b[8+i])
	}
	return hi, lo
}

// offsetAddr turns an offset inside the cluster range into an address. The
// range is masked and off < rangeSize, so the sum never leaves the ring's
// prefix.
func offsetAddr(base netip.Prefix, off uint64) netip.Addr {
	hi, lo := addrWords(base.Addr())
	lo, carry := bits.Add64(lo, off, 0)
	hi += carry
	if base.Addr().Is4() {
		return netip.AddrFrom4([4]byte{byte(lo >> 24), byte(lo >> 16), byte(lo >> 8), byte(lo)})
	}
	var b [16]byte
	for i := range 8 {
		b[7-i] = byte(hi >> (8 * i))
		b[15-i] = byte(lo >> (8 * i))
	}
	return netip.AddrFrom16(b)
}

// addrOffset is the inverse of offsetAddr; ok is false outside the ring's
// prefix (for a large IPv6 range, also for addresses of the range above
// its ring), and for an address of the other family.
func addrOffset(base netip.Prefix, a netip.Addr) (uint64, bool) {
	if a.Is4() != base.Addr().Is4() || a.Zone() != "" || !ringPrefix(base).Contains(a) {
		return 0, false
	}
	_, bl := addrWords(base.Addr())
	_, al := addrWords(a)
	// Inside the ring's prefix the high word and the bits above ringBits
	// are those of base: the difference of the low words is the offset.
	return al - bl, true
}

// usableOffset says whether the address at off of the cluster range p may
// go to a pod or be a node's gateway. IPv4 keeps the range's network and
// broadcast addresses out (for ranges of 4 and more); IPv6 has no broadcast
// but keeps the range's all-zero host address out, the subnet-router
// anycast address (RFC 4291, 2.6.1).
func usableOffset(p netip.Prefix, off uint64) bool {
	if p.Addr().Is6() {
		return off != 0
	}
	size := rangeSize(p)
	return size < 4 || (off != 0 && off != size-1)
}

// spanCIDRs splits the offsets [s.start, s.end) of the cluster range into the
// fewest CIDR prefixes, lowest first. The ring's prefix is itself aligned,
// so alignment of offsets is alignment of addresses. The loop runs once per
// prefix (at most two per bit of the span), never per address, so an IPv6
// span of 2^47 addresses costs no more than a small IPv4 one.
func spanCIDRs(base netip.Prefix, s span) []netip.Prefix {
	var out []netip.Prefix
	addrBits := base.Addr().BitLen()
	for pos := s.start; pos < s.end; {
		// Largest block aligned at pos (offset 0 is aligned to anything)...
		size := uint64(1) << 63
		if pos != 0 {
			size = uint64(1) << bits.TrailingZeros64(pos)
		}
		// ...that still fits.
		for size > s.end-pos {
			size >>= 1
		}
		p := netip.PrefixFrom(offsetAddr(base, pos), addrBits-bits.TrailingZeros64(size))
		out = append(out, p)
		pos += size
	}
	return out
}
