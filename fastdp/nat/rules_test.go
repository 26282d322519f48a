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

// TestInnerDeviceRules: with an end-to-end device the overlay source rules
// cover it too, in both families; without one they name the WireGuard
// device alone, and a device named as the WireGuard one is refused.
func TestInnerDeviceRules(t *testing.T) {
	c := &Config{
		ClusterRange:  netip.MustParsePrefix("10.32.0.0/12"),
		OverlayIP:     netip.MustParseAddr("10.32.0.1"),
		ClusterRange6: netip.MustParsePrefix("fd32::/48"),
		OverlayIP6:    netip.MustParseAddr("fd32::1"),
		OverlayDevice: "mesh-wg",
	}
	count := func(rs []rule, dev string) int {
		n := 0
		for _, r := range rs {
			if strings.HasPrefix(r.comment, "oifname "+dev+" ") {
				n++
			}
		}
		return n
	}
	if n := count(c.rules(), "mesh-e2e") + count(c.rules6(), "mesh-e2e"); n != 0 {
		t.Fatalf("%d rules for an end-to-end device not configured", n)
	}
	c.InnerDevice = "mesh-e2e"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, rs := range [][]rule{c.rules(), c.rules6()} {
		if got, want := count(rs, "mesh-e2e"), count(rs, "mesh-wg"); got != 2 || want != 2 {
			t.Errorf("overlay source rules: %d for mesh-e2e, %d for mesh-wg; want 2 each", got, want)
		}
	}
	if want := "oifname mesh-e2e ip saddr != 10.32.0.0/12 snat to 10.32.0.1"; !slices.ContainsFunc(c.rules(), func(r rule) bool { return r.comment == want }) {
		t.Errorf("missing %q", want)
	}
	c.InnerDevice = "mesh-wg"
	if err := c.Validate(); err == nil {
		t.Error("an end-to-end device named as the WireGuard device was accepted")
	}
}
