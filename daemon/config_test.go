package daemon

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidateNoMasqueradeCIDRs(t *testing.T) {
	many := make([]netip.Prefix, 65)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 0}), 24)
	}
	for _, tc := range []struct {
		name  string
		cidrs []netip.Prefix
		err   string
	}{
		{"none", nil, ""},
		{"IPv4 prefixes", []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("10.0.0.0/8")}, ""},
		{"host bits", []netip.Prefix{netip.MustParsePrefix("192.168.1.1/16")}, "192.168.1.1/16"},
		{"IPv6", []netip.Prefix{netip.MustParsePrefix("fd00::/8")}, "fd00::/8"},
		{"too many", many, "at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.NoMasqueradeCIDRs = tc.cidrs
			err := c.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--no-masquerade-cidrs") {
				t.Fatalf("error %v, want one naming --no-masquerade-cidrs and %q", err, tc.err)
			}
		})
	}
}
