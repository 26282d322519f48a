package daemon

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
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
		{"IPv6 (for the ip6 table of a dual-stack mesh)", []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}, ""},
		{"IPv6 host bits", []netip.Prefix{netip.MustParsePrefix("2001:db8::1/32")}, "2001:db8::1/32"},
		{"IPv4-mapped", []netip.Prefix{netip.MustParsePrefix("::ffff:192.168.0.0/112")}, "::ffff:192.168.0.0/112"},
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

func TestValidateReachRecheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		every time.Duration
		ok    bool
	}{
		{"default", DefaultConfig().ReachRecheck, true},
		{"never", 0, true},
		{"shortest", MinReachRecheck, true},
		{"too often", MinReachRecheck - time.Millisecond, false},
		{"negative", -time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.ReachRecheck = tc.every
			err := c.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "--reach-recheck") {
				t.Fatalf("error %v does not name --reach-recheck", err)
			}
		})
	}
}

func TestValidateGossipTiming(t *testing.T) {
	for _, tc := range []struct {
		name   string
		timing mesh.Timing
		ok     bool
	}{
		{"default", DefaultConfig().GossipTiming, true},
		{"lan", mesh.TimingLAN, true},
		{"wan", mesh.TimingWAN, true},
		{"unknown", "local", false},
		{"case", "WAN", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.GossipTiming = tc.timing
			err := c.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "--gossip-timing") {
				t.Fatalf("error %v does not name --gossip-timing", err)
			}
		})
	}
}

// TestValidateIPAllocRange6: the second --ipalloc-range must be an IPv6
// prefix the IPAM takes; a bad one is refused at start with the flag named.
func TestValidateIPAllocRange6(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    netip.Prefix
		err  string
	}{
		{"off", netip.Prefix{}, ""},
		{"ULA /48", netip.MustParsePrefix("fd32::/48"), ""},
		{"IPv4 twice", netip.MustParsePrefix("10.64.0.0/12"), "must be an IPv6 prefix"},
		{"IPv4-mapped", netip.MustParsePrefix("::ffff:10.64.0.0/108"), "must be an IPv6 prefix"},
		{"host bits", netip.MustParsePrefix("fd32::1/48"), "host bits"},
		{"too small", netip.MustParsePrefix("fd32::/127"), "--ipalloc-range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.IPAllocRange6 = tc.r
			err := c.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatalf("Validate with IPv6 range %v: %v", tc.r, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--ipalloc-range") {
				t.Fatalf("Validate with IPv6 range %v = %v, want an error naming --ipalloc-range and %q", tc.r, err, tc.err)
			}
		})
	}
}

// TestValidateDualStackWithPolicy: NetworkPolicy covers both families, so
// a node with an IPv6 range (dual-stack or IPv6-only) runs --kube with
// policy on, as with --no-policy.
func TestValidateDualStackWithPolicy(t *testing.T) {
	for _, tc := range []struct {
		name           string
		ipv6Only       bool
		kube, noPolicy bool
	}{
		{"without kube", false, false, false},
		{"kube with policy", false, true, false},
		{"kube without policy", false, true, true},
		{"ipv6-only kube with policy", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			if tc.ipv6Only {
				c.IPAllocRange = netip.MustParsePrefix("fd32::/48")
			} else {
				c.IPAllocRange6 = netip.MustParsePrefix("fd32::/48")
			}
			c.Kube, c.NoPolicy = tc.kube, tc.noPolicy
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate = %v, want nil", err)
			}
		})
	}
}

// TestLacksFamily: a member alive past the grace that the IPv6 ring does not
// know is named; self, young, dead and known members are not.
func TestLacksFamily(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Minute)
	members := []mesh.Member{
		{Name: "self", Self: true, State: api.MemberAlive, Since: old},
		{Name: "dual", State: api.MemberAlive, Since: old},
		{Name: "v4only", State: api.MemberAlive, Since: old},
		{Name: "young", State: api.MemberAlive, Since: now},
		{Name: "dead", State: api.MemberDead, Since: old},
	}
	got := lacksFamily([]api.IPAMPeer{{Name: "self"}, {Name: "dual"}}, members, now)
	if len(got) != 1 || !strings.Contains(got[0], "v4only") || !strings.Contains(got[0], "--ipalloc-range") {
		t.Fatalf("lacksFamily = %q, want one problem naming v4only and --ipalloc-range", got)
	}
}

// TestValidateIPv6Only: an IPv6 range alone is an IPv6-only mesh (its
// ring with the IPv6 state file and channel), also with NetworkPolicy
// enforcement; two IPv6 ranges are refused.
func TestValidateIPv6Only(t *testing.T) {
	for _, tc := range []struct {
		name      string
		r, r6     string
		kube      bool
		err       string
		v4, v6    string
		ipv6Alone bool
	}{
		{name: "IPv4 only", r: "10.32.0.0/12", v4: "10.32.0.0/12"},
		{name: "dual-stack", r: "10.32.0.0/12", r6: "fd32::/48", v4: "10.32.0.0/12", v6: "fd32::/48"},
		{name: "IPv6 only", r: "fd32::/48", v6: "fd32::/48", ipv6Alone: true},
		{name: "two IPv6", r: "fd32::/48", r6: "fd33::/48", err: "must be an IPv4 prefix"},
		{name: "IPv6 only with policy", r: "fd32::/48", kube: true, v6: "fd32::/48", ipv6Alone: true},
		{name: "IPv6 only host bits", r: "fd32::1/48", err: "host bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Insecure = true
			c.Kube = tc.kube
			c.IPAllocRange = netip.MustParsePrefix(tc.r)
			if tc.r6 != "" {
				c.IPAllocRange6 = netip.MustParsePrefix(tc.r6)
			}
			err := c.Validate()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Validate = %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ipv4Range(); (got.IsValid() || tc.v4 != "") && got.String() != tc.v4 {
				t.Errorf("ipv4Range = %v, want %q", got, tc.v4)
			}
			if got := c.ipv6Range(); (got.IsValid() || tc.v6 != "") && got.String() != tc.v6 {
				t.Errorf("ipv6Range = %v, want %q", got, tc.v6)
			}
			if c.ipv6Only() != tc.ipv6Alone {
				t.Errorf("ipv6Only = %v, want %v", c.ipv6Only(), tc.ipv6Alone)
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
