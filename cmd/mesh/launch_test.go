package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseCIDRs(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []netip.Prefix
		err  string
	}{
		{"empty", "", nil, ""},
		{"one", "10.0.0.0/8", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, ""},
		{"spaces and empty items", " 10.0.0.0/8, ,192.168.0.0/16,", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}, ""},
		{"not a prefix", "10.0.0.1", nil, "10.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCIDRs(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
