package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ClusterRanges is the cluster range of each address family of a mesh: an
// IPv4-only, IPv6-only or dual-stack mesh. A family whose prefix is the
// zero value is off. Each range that is on gets an Allocator of its own,
// with its own ring, state file and gossip (docs/ipam.md, "Dual-stack").
type ClusterRanges struct {
	IPv4, IPv6 netip.Prefix
}

// Prefixes returns the ranges that are on, IPv4 first.
func (r ClusterRanges) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{r.IPv4, r.IPv6} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

// String is the comma list ParseClusterRanges reads back.
func (r ClusterRanges) String() string {
	var s []string
	for _, p := range r.Prefixes() {
		s = append(s, p.String())
	}
	return strings.Join(s, ",")
}

// ParseClusterRanges reads the values of --ipalloc-range: the flag given
// once per family (--ipalloc-range 10.32.0.0/12 --ipalloc-range
// fd32::/48), or a comma list in one value (10.32.0.0/12,fd32::/48), or
// both. At most one range per family; each must be a masked prefix of a
// size an Allocator takes (checkRange). The error names the flag and the
// value at fault. No value at all is an error too: the caller applies its
// default before calling.
func ParseClusterRanges(values []string) (ClusterRanges, error) {
	var r ClusterRanges
	n := 0
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				return ClusterRanges{}, fmt.Errorf("--ipalloc-range %q: empty range in the list", v)
			}
			p, err := netip.ParsePrefix(item)
			if err != nil {
				return ClusterRanges{}, fmt.Errorf("--ipalloc-range %q: %w", item, err)
			}
			if err := checkRange(p); err != nil {
				return ClusterRanges{}, fmt.Errorf("--ipalloc-range %q: %w", item, err)
			}
			if p != p.Masked() {
				return ClusterRanges{}, fmt.Errorf("--ipalloc-range %q has host bits set (did you mean %v?)", item, p.Masked())
			}
			slot, family := &r.IPv4, "IPv4"
			if p.Addr().Is6() {
				slot, family = &r.IPv6, "IPv6"
			}
			if slot.IsValid() {
				return ClusterRanges{}, fmt.Errorf("--ipalloc-range gives two %s ranges, %v and %v: at most one range per address family", family, *slot, p)
			}
			*slot = p
			n++
		}
	}
	if n == 0 {
		return ClusterRanges{}, errors.New("--ipalloc-range: no range given")
	}
	return r, nil
}
