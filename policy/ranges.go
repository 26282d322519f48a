package policy

import (
	"fmt"
	"net/netip"
	"slices"
)

// ipRange is an inclusive range of addresses of one family.
type ipRange struct{ lo, hi netip.Addr }

// addrRange is the range of one address.
func addrRange(a netip.Addr) ipRange { return ipRange{a, a} }

// prefixRange returns the addresses of a prefix.
func prefixRange(p netip.Prefix) ipRange {
	p = p.Masked()
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	hi, _ := netip.AddrFromSlice(b)
	return ipRange{p.Addr(), hi}
}

func (r ipRange) String() string {
	if r.lo == r.hi {
		return r.lo.String()
	}
	return fmt.Sprintf("%s-%s", r.lo, r.hi)
}

// family is the address family of the range.
func (r ipRange) family() Family { return familyOf(r.lo) }

// subtract returns rs without the addresses of cut (of the same family).
func subtract(rs []ipRange, cut ipRange) []ipRange {
	var out []ipRange
	for _, r := range rs {
		if r.family() != cut.family() || cut.hi.Less(r.lo) || r.hi.Less(cut.lo) {
			out = append(out, r)
			continue
		}
		if r.lo.Less(cut.lo) {
			out = append(out, ipRange{r.lo, cut.lo.Prev()})
		}
		if cut.hi.Less(r.hi) {
			out = append(out, ipRange{cut.hi.Next(), r.hi})
		}
	}
	return out
}

// mergeRanges sorts rs (the IPv4 ranges first) and joins overlapping and
// adjacent ranges of one family, as an nftables interval set needs them.
func mergeRanges(rs []ipRange) []ipRange {
	if len(rs) == 0 {
		return nil
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b ipRange) int { return a.lo.Compare(b.lo) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		// Next is invalid past the family's last address: that range
		// already reaches the end of its family.
		next := last.hi.Next()
		if r.family() == last.family() && (!next.IsValid() || r.lo.Compare(next) <= 0) {
			if last.hi.Less(r.hi) {
				last.hi = r.hi
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// rangesOf returns the ranges of family f of rs, which is sorted as
// mergeRanges leaves it.
func rangesOf(rs []ipRange, f Family) []ipRange {
	i := slices.IndexFunc(rs, func(r ipRange) bool { return r.family() == IPv6 })
	if i < 0 {
		i = len(rs)
	}
	if f == IPv4 {
		return rs[:i]
	}
	return rs[i:]
}
