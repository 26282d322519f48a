package policy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
)

// ipRange is an inclusive range of IPv4 addresses, as host-order integers.
type ipRange struct{ lo, hi uint32 }

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u32ToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// prefixRange returns the addresses of an IPv4 prefix.
func prefixRange(p netip.Prefix) ipRange {
	p = p.Masked()
	lo := addrToU32(p.Addr())
	hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
	return ipRange{lo, hi}
}

func (r ipRange) String() string {
	if r.lo == r.hi {
		return u32ToAddr(r.lo).String()
	}
	return fmt.Sprintf("%s-%s", u32ToAddr(r.lo), u32ToAddr(r.hi))
}

// subtract returns r without the addresses of cut.
func subtract(rs []ipRange, cut ipRange) []ipRange {
	var out []ipRange
	for _, r := range rs {
		if cut.hi < r.lo || cut.lo > r.hi {
			out = append(out, r)
			continue
		}
		if cut.lo > r.lo {
			out = append(out, ipRange{r.lo, cut.lo - 1})
		}
		if cut.hi < r.hi {
			out = append(out, ipRange{cut.hi + 1, r.hi})
		}
	}
	return out
}

// mergeRanges sorts rs and joins overlapping and adjacent ranges, as an
// nftables interval set needs them.
func mergeRanges(rs []ipRange) []ipRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b ipRange) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if last.hi == ^uint32(0) || r.lo <= last.hi+1 {
			last.hi = max(last.hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}
