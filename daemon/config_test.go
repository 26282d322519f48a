package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/mesh"
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

func TestValidateNoMasqueradeCIDRs(t *testing.T) {
	many := make([]netip.Prefix, 65)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 0}), 24)
	}
	for _, tc := range []struct {
		name  string
		cidrs []netip.Prefix
		err   string
	}{
		{"none", nil, ""},
		{"IPv4 prefixes", []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("10.0.0.0/8")}, ""},
		{"host bits", []netip.Prefix{netip.MustParsePrefix("192.168.1.1/16")}, "192.168.1.1/16"},
		{"IPv6", []netip.Prefix{netip.MustParsePrefix("fd00::/8")}, "fd00::/8"},
		{"too many", many, "at most 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.NoMasqueradeCIDRs = tc.cidrs
			err := c.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--no-masquerade-cidrs") {
				t.Fatalf("error %v, want one naming --no-masquerade-cidrs and %q", err, tc.err)
			}
		})
	}
}

func TestValidateRequiresPassword(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != ErrNoPassword {
		t.Fatalf("Validate() = %v, want ErrNoPassword", err)
	}
	cfg.Insecure = true
	cfg.Peers = []string{"192.0.2.1", "host:99999"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "99999") {
		t.Fatalf("Validate() = %v, want a bad port error", err)
	}
	cfg.Peers = []string{"192.0.2.1"}
	if err := cfg.Validate(); err != nil || cfg.Peers[0] != "192.0.2.1:6783" {
		t.Fatalf("Validate() = %v, peers %v", err, cfg.Peers)
	}
}

func TestValidateRelayPreference(t *testing.T) {
	for _, tc := range []struct {
		name string
		pref int
		ok   bool
	}{
		{"default", 0, true},
		{"highest", mesh.MaxRelayPreference, true},
		{"lowest", -mesh.MaxRelayPreference, true},
		{"too high", mesh.MaxRelayPreference + 1, false},
		{"too low", -mesh.MaxRelayPreference - 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.RelayPreference = tc.pref
			err := c.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "--relay-preference") {
				t.Fatalf("error %v does not name --relay-preference", err)
			}
		})
	}
}

// TestValidateDataplaneProcess: --dataplane-process takes auto (the
// default), external or off, and names itself in the error for anything
// else.
func TestValidateDataplaneProcess(t *testing.T) {
	if got := DefaultConfig().DataplaneProcess; got != fastdp.ProcessAuto {
		t.Errorf("default --dataplane-process = %q, want %q", got, fastdp.ProcessAuto)
	}
	tests := []struct {
		name, mode string
		wantErr    bool
	}{
		{name: "auto", mode: fastdp.ProcessAuto},
		{name: "external", mode: fastdp.ProcessExternal},
		{name: "off", mode: fastdp.ProcessOff},
		{name: "empty", mode: "", wantErr: true},
		{name: "unknown", mode: "on", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.DataplaneProcess = tt.mode
			err := c.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate with --dataplane-process %q = %v, want error %v", tt.mode, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "--dataplane-process") {
				t.Errorf("error %q does not name --dataplane-process", err)
			}
		})
	}
}
