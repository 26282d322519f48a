package daemon

import (
	"strings"
	"testing"

	"github.com/meshnet/mesh/fastdp"
)

// TestValidateMTUUsesDataplaneBounds: an --mtu the data plane would refuse at
// every reconcile is refused at start instead.
func TestValidateMTUUsesDataplaneBounds(t *testing.T) {
	tests := []struct {
		name    string
		mtu     int
		wantErr bool
	}{
		{name: "detect", mtu: 0},
		{name: "below the IPv6 minimum", mtu: 1000, wantErr: true},
		{name: "one below the minimum", mtu: fastdp.MinMTU - 1, wantErr: true},
		{name: "minimum", mtu: fastdp.MinMTU},
		{name: "common", mtu: 1420},
		{name: "maximum", mtu: fastdp.MaxMTU},
		{name: "above the maximum", mtu: fastdp.MaxMTU + 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.MTU = tt.mtu
			err := c.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate with --mtu %d = %v, want error %v", tt.mtu, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "--mtu") {
				t.Errorf("error %q does not name --mtu", err)
			}
			if err == nil && tt.mtu != 0 && fastdp.ValidMTU(tt.mtu) != nil {
				t.Errorf("daemon accepts --mtu %d that the data plane refuses", tt.mtu)
			}
		})
	}
}
