package daemon

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/mesh"
)

// The push/pull interval carries the IPAM heartbeats that automatic
// reclaim watches: at least pushPullsPerReclaim of them fit in the reclaim
// window, never more often than once a second, and reclaim off or a window
// of minutes keeps the default.
func TestPushPullInterval(t *testing.T) {
	for _, tc := range []struct {
		name          string
		reclaim, want time.Duration
	}{
		{"reclaim off", 0, mesh.DefaultPushPullInterval},
		{"minutes", 5 * time.Minute, mesh.DefaultPushPullInterval},
		{"one minute", time.Minute, mesh.DefaultPushPullInterval},
		{"e2e window", 20 * time.Second, 5 * time.Second},
		{"simulation window", 8 * time.Second, 2 * time.Second},
		{"floor", 2 * time.Second, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := pushPullInterval(tc.reclaim)
			if got != tc.want {
				t.Fatalf("pushPullInterval(%v) = %v, want %v", tc.reclaim, got, tc.want)
			}
			if tc.reclaim >= pushPullsPerReclaim*time.Second && got*pushPullsPerReclaim > tc.reclaim {
				t.Fatalf("pushPullInterval(%v) = %v: fewer than %d push/pulls per reclaim window", tc.reclaim, got, pushPullsPerReclaim)
			}
		})
	}
}
