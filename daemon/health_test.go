package daemon

import (
	"strings"
	"testing"
	"time"
)

func TestLoopHealth(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	tests := []struct {
		name    string
		beats   map[string]time.Duration // loop -> beat at t0+d
		at      time.Duration
		wantErr string
	}{
		{name: "no loop yet", at: time.Hour},
		{name: "all fresh", beats: map[string]time.Duration{loopIPAMTick: 0, loopReconcile: 0}, at: 10 * time.Second},
		{name: "tick stalled", beats: map[string]time.Duration{loopIPAMTick: 0, loopReconcile: 40 * time.Second}, at: 45 * time.Second, wantErr: "ipam-tick loop made no progress for 45s"},
		{name: "reconcile within its longer bound", beats: map[string]time.Duration{loopIPAMTick: 40 * time.Second, loopReconcile: 0}, at: 45 * time.Second},
		{name: "reconcile stalled", beats: map[string]time.Duration{loopIPAMTick: 90 * time.Second, loopReconcile: 0}, at: 91 * time.Second, wantErr: "reconcile loop made no progress"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h loopHealth
			for loop, d := range tt.beats {
				h.beat(loop, t0.Add(d))
			}
			err := h.check(t0.Add(tt.at))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("check = %v, want healthy", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("check = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
