package nat

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestFamilyRules: the two tables come from one rule set; each takes the
// no-masquerade CIDRs and node addresses of its own family only, and the
// kube-proxy mark rule exists in both.
func TestFamilyRules(t *testing.T) {
	c := &Config{
		ClusterRange:  netip.MustParsePrefix("10.32.0.0/12"),
		OverlayIP:     netip.MustParseAddr("10.32.0.1"),
		ClusterRange6: netip.MustParsePrefix("fd32::/48"),
		OverlayIP6:    netip.MustParseAddr("fd32::1"),
		OverlayDevice: "mesh-wg",
		Masquerade:    true,
		NoMasquerade:  []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("2001:db8::/32")},
		Nodes:         []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::2")},
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	comments := func(rs []rule) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.comment)
		}
		return out
	}
	tests := []struct {
		name      string
		rules     []rule
		want, not []string
	}{
		{"ip", c.rules(), []string{
			"oifname mesh-wg ip saddr != 10.32.0.0/12 snat to 10.32.0.1",
			"oifname mesh-wg meta mark & 0x4000 == 0x4000 snat to 10.32.0.1",
			"ip daddr 10.32.0.0/12 return",
			"ip daddr 192.168.0.0/16 return (no-masquerade)",
			"ip saddr 10.32.0.0/12 masquerade",
		}, []string{"ip daddr 2001:db8::/32 return (no-masquerade)", "ip6 daddr 2001:db8::/32 return (no-masquerade)"}},
		{"ip6", c.rules6(), []string{
			"oifname mesh-wg ip6 saddr != fd32::/48 snat to fd32::1",
			"oifname mesh-wg meta mark & 0x4000 == 0x4000 snat to fd32::1",
			"ip6 daddr fd32::/48 return",
			"ip6 daddr 2001:db8::/32 return (no-masquerade)",
			"ip6 saddr fd32::/48 masquerade",
		}, []string{"ip6 daddr 192.168.0.0/16 return (no-masquerade)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := comments(tt.rules)
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("missing %q in %q", w, got)
				}
			}
			for _, n := range tt.not {
				if slices.Contains(got, n) {
					t.Errorf("unexpected %q in %q", n, got)
				}
			}
			nodes := 0
			for _, g := range got {
				if strings.Contains(g, "daddr @nodes masquerade (1 nodes") {
					nodes++
				}
			}
			if nodes != 1 {
				t.Errorf("%d node rules with one node of the family, want 1: %q", nodes, got)
			}
		})
	}
}
