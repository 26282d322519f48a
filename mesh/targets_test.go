package mesh

import (
	"net/netip"
	"testing"
)

// The join loop's check of which targets are connected: a lookup of the
// target's address among the live members', host names resolved.
func TestMatchesAny(t *testing.T) {
	live := map[netip.AddrPort]bool{
		netip.MustParseAddrPort("127.0.0.1:6783"): true,
		netip.MustParseAddrPort("[fd00::1]:7000"): true,
	}
	for _, tc := range []struct {
		name, addr string
		want       bool
	}{
		{"live IPv4", "127.0.0.1:6783", true},
		{"live IPv6", "[fd00::1]:7000", true},
		{"IPv4-mapped IPv6 of a live member", "[::ffff:127.0.0.1]:6783", true},
		{"host name of a live member", "localhost:6783", true},
		{"other port", "127.0.0.1:6784", false},
		{"other address", "127.0.0.2:6783", false},
		{"no port", "127.0.0.1", false},
		{"port out of range", "127.0.0.1:70000", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := matchesAny(tc.addr, live); got != tc.want {
				t.Fatalf("matchesAny(%q) = %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
}
