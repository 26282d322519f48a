package relayed

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// makePlan lays the sources' prefixes out as disjoint intervals, the
// longest prefix deciding where they nest (a held address inside another
// peer's range), merges adjacent intervals of one peer, ends every
// interval but one that reaches the end of the address space, and keeps
// the families apart.
func TestMakePlan(t *testing.T) {
	a, b, c := peerID("host1"), peerID("host2"), peerID("host3")
	pp := netip.MustParsePrefix
	for _, tc := range []struct {
		name    string
		sources []Source
		want4   string
		want6   string
	}{
		{name: "none"},
		{
			name:    "disjoint",
			sources: []Source{{"host1", []netip.Prefix{pp("10.32.0.0/16")}}, {"host2", []netip.Prefix{pp("10.34.0.0/15")}}},
			want4:   "10.32.0.0:" + a + " 10.33.0.0:end 10.34.0.0:" + b + " 10.36.0.0:end",
		},
		{
			name: "adjacent ranges of two peers and of one",
			sources: []Source{{"host1", []netip.Prefix{pp("10.32.0.0/16"), pp("10.33.0.0/16")}},
				{"host2", []netip.Prefix{pp("10.34.0.0/16")}}},
			want4: "10.32.0.0:" + a + " 10.34.0.0:end 10.34.0.0:" + b + " 10.35.0.0:end",
		},
		{
			name: "a held address inside another peer's range",
			sources: []Source{{"host1", []netip.Prefix{pp("10.32.0.0/16")}},
				{"host2", []netip.Prefix{pp("10.32.5.7/32"), pp("10.32.255.255/32")}}},
			want4: "10.32.0.0:" + a + " 10.32.5.7:end 10.32.5.7:" + b + " 10.32.5.8:end 10.32.5.8:" + a +
				" 10.32.255.255:end 10.32.255.255:" + b + " 10.33.0.0:end",
		},
		{
			name: "nested three deep, both families, mapped addresses",
			sources: []Source{
				{"host1", []netip.Prefix{pp("10.0.0.0/8"), pp("fd00::/64")}},
				{"host2", []netip.Prefix{pp("10.1.0.0/16"), pp("::ffff:10.9.0.0/112")}},
				{"host3", []netip.Prefix{pp("10.1.2.0/24"), pp("fd00::5/128")}},
			},
			want4: "10.0.0.0:" + a + " 10.1.0.0:end 10.1.0.0:" + b + " 10.1.2.0:end 10.1.2.0:" + c + " 10.1.3.0:end 10.1.3.0:" + b +
				" 10.2.0.0:end 10.2.0.0:" + a + " 10.9.0.0:end 10.9.0.0:" + b + " 10.10.0.0:end 10.10.0.0:" + a + " 11.0.0.0:end",
			want6: "fd00:::" + a + " fd00::5:end fd00::5:" + c + " fd00::6:end fd00::6:" + a + " fd00:0:0:1:::end",
		},
		{
			name:    "the end of the address space",
			sources: []Source{{"host1", []netip.Prefix{pp("255.255.255.0/24"), pp("ffff::/16")}}},
			want4:   "255.255.255.0:" + a,
			want6:   "ffff:::" + a,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := makePlan(tc.sources)
			show := func(elems4 bool) string {
				es := p.elems6
				if elems4 {
					es = p.elems4
				}
				var out []string
				for _, e := range es {
					ad, _ := netip.AddrFromSlice(e.Key)
					v := "end"
					if !e.IntervalEnd {
						if e.VerdictData == nil || e.VerdictData.Chain != e.Comment {
							t.Fatalf("element %s jumps to %+v, comment %q", ad, e.VerdictData, e.Comment)
						}
						v = e.Comment
					}
					out = append(out, fmt.Sprintf("%s:%s", ad, v))
				}
				return strings.Join(out, " ")
			}
			if got := show(true); got != tc.want4 {
				t.Errorf("IPv4 elements\n got %s\nwant %s", got, tc.want4)
			}
			if got := show(false); got != tc.want6 {
				t.Errorf("IPv6 elements\n got %s\nwant %s", got, tc.want6)
			}
			if len(p.ids) != len(tc.sources) {
				t.Errorf("ids %v for %d sources", p.ids, len(tc.sources))
			}
		})
	}
}

// A peer's id is short enough for nftables' names on any kernel (32 bytes
// with the terminating NUL on old ones) whatever the peer's name, and
// tells two names apart.
func TestPeerID(t *testing.T) {
	long := strings.Repeat("n", 300)
	if id := peerID(long); len(id) > 31 || !strings.HasPrefix(id, peerPrefix) {
		t.Fatalf("peerID of a long name = %q", id)
	}
	if peerID("host1") == peerID("host2") || peerID("host1") != peerID("host1") {
		t.Fatal("peerID is not a function of the name alone")
	}
}
