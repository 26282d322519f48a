package ipam

import (
	"strings"
	"testing"
)

func TestParseClusterRanges(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   string // ClusterRanges.String() when accepted
		err    string // part of the error when refused
	}{
		{"ipv4 only", []string{"10.32.0.0/12"}, "10.32.0.0/12", ""},
		{"ipv6 only", []string{"fd32::/48"}, "fd32::/48", ""},
		{"once per family", []string{"10.32.0.0/12", "fd32::/48"}, "10.32.0.0/12,fd32::/48", ""},
		{"ipv6 first", []string{"fd32::/48", "10.32.0.0/12"}, "10.32.0.0/12,fd32::/48", ""},
		{"comma list", []string{"10.32.0.0/12,fd32::/48"}, "10.32.0.0/12,fd32::/48", ""},
		{"comma list with spaces", []string{" fd32::/48 , 10.32.0.0/12 "}, "10.32.0.0/12,fd32::/48", ""},
		{"nothing", nil, "", "no range given"},
		{"empty value", []string{""}, "", "empty range"},
		{"trailing comma", []string{"10.32.0.0/12,"}, "", "empty range"},
		{"two ipv4", []string{"10.32.0.0/12", "10.64.0.0/12"}, "", "two IPv4 ranges, 10.32.0.0/12 and 10.64.0.0/12"},
		{"two ipv6 in a list", []string{"fd32::/48,fd33::/48"}, "", "two IPv6 ranges"},
		{"same range twice", []string{"10.32.0.0/12", "10.32.0.0/12"}, "", "two IPv4 ranges"},
		{"not a prefix", []string{"10.32.0.0"}, "", `"10.32.0.0"`},
		{"garbage", []string{"10.32.0.0/12,fd32::zz/48"}, "", `"fd32::zz/48"`},
		{"host bits", []string{"fd32::1/48"}, "", "did you mean fd32::/48"},
		{"ipv4 too small", []string{"10.0.0.0/31"}, "", "between 1 and 30"},
		{"ipv6 too small", []string{"fd32::/127"}, "", "between 1 and 126"},
		{"ipv4-mapped", []string{"::ffff:10.32.0.0/108"}, "", "IPv4-mapped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseClusterRanges(tt.values)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "--ipalloc-range") {
					t.Fatalf("ParseClusterRanges(%q) = %v, %v; want an error naming the flag and containing %q", tt.values, got, err, tt.err)
				}
				if got != (ClusterRanges{}) {
					t.Fatalf("refused input left %v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseClusterRanges(%q): %v", tt.values, err)
			}
			if got.String() != tt.want {
				t.Fatalf("ParseClusterRanges(%q) = %s, want %s", tt.values, got, tt.want)
			}
			// The comma list it prints reads back the same.
			if again, err := ParseClusterRanges([]string{got.String()}); err != nil || again != got {
				t.Fatalf("re-reading %s: %v, %v", got, again, err)
			}
			for _, p := range got.Prefixes() {
				cfg := Config{Range: p, Self: "a"}
				if err := cfg.validate(); err != nil {
					t.Fatalf("an Allocator refuses %v: %v", p, err)
				}
			}
		})
	}
}
