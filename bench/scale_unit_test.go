//go:build bench

package bench

import (
	"slices"
	"testing"
)

func TestFitSizes(t *testing.T) {
	const gib = int64(1) << 30
	for _, tc := range []struct {
		name         string
		sizes        string
		avail        int64
		fit, skipped []string
	}{
		{"all fit on 24 GiB", "100,1000,5000", 23 * gib, []string{"100", "1000", "5000"}, nil},
		{"5000 left out on 16 GiB", "100, 1000 ,5000", 16 * gib, []string{"100", "1000"}, []string{"5000"}},
		{"nothing fits beside the headroom", "100", simHeadroom, nil, []string{"100"}},
		{"a bad size is passed on", "x,10", 4 * gib, []string{"x", "10"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fit, skipped := fitSizes(tc.sizes, tc.avail)
			if !slices.Equal(fit, tc.fit) || !slices.Equal(skipped, tc.skipped) {
				t.Errorf("fitSizes(%q, %d GiB) = %q, %q; want %q, %q", tc.sizes, tc.avail/gib, fit, skipped, tc.fit, tc.skipped)
			}
		})
	}
	if avail, err := memAvailable(); err != nil || avail <= 0 {
		t.Errorf("memAvailable() = %d, %v", avail, err)
	}
}
