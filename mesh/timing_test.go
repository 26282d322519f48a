package mesh

import (
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestApplyTiming: the LAN timings are memberlist's LAN profile, the WAN
// timings its WAN profile's failure detection and gossip, and an unknown
// name is refused rather than run as LAN.
func TestApplyTiming(t *testing.T) {
	lan, wan := memberlist.DefaultLANConfig(), memberlist.DefaultWANConfig()
	for _, tc := range []struct {
		name    string
		timing  Timing
		want    *memberlist.Config
		wantErr bool
	}{
		{name: "unset", timing: "", want: lan},
		{name: "lan", timing: TimingLAN, want: lan},
		{name: "wan", timing: TimingWAN, want: wan},
		{name: "unknown", timing: "fast", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mc := memberlist.DefaultLANConfig()
			mc.PushPullInterval = 7 * time.Second // set by the caller: kept
			err := applyTiming(mc, tc.timing)
			if (err != nil) != tc.wantErr {
				t.Fatalf("applyTiming(%q) = %v, want error %v", tc.timing, err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			for _, f := range []struct {
				name      string
				got, want any
			}{
				{"ProbeInterval", mc.ProbeInterval, tc.want.ProbeInterval},
				{"ProbeTimeout", mc.ProbeTimeout, tc.want.ProbeTimeout},
				{"SuspicionMult", mc.SuspicionMult, tc.want.SuspicionMult},
				{"GossipInterval", mc.GossipInterval, tc.want.GossipInterval},
				{"GossipNodes", mc.GossipNodes, tc.want.GossipNodes},
				{"GossipToTheDeadTime", mc.GossipToTheDeadTime, tc.want.GossipToTheDeadTime},
				{"TCPTimeout", mc.TCPTimeout, tc.want.TCPTimeout},
				{"PushPullInterval", mc.PushPullInterval, 7 * time.Second},
			} {
				if f.got != f.want {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
		})
	}
	if wan.ProbeTimeout <= lan.ProbeTimeout || wan.ProbeInterval <= lan.ProbeInterval {
		t.Fatalf("memberlist's WAN profile is not slower than its LAN one: %v/%v vs %v/%v", wan.ProbeInterval, wan.ProbeTimeout, lan.ProbeInterval, lan.ProbeTimeout)
	}
}
