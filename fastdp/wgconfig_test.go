package fastdp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshnet/mesh/crypto"
)

func key(b byte) crypto.Key {
	var k crypto.Key
	k[0] = b
	return k
}

func udp(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

func TestWGDiff(t *testing.T) {
	peerA := Peer{PublicKey: key(1), PresharedKey: key(11), Endpoint: netip.MustParseAddrPort("192.0.2.1:6784"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.32.0.0/24"), netip.MustParsePrefix("10.32.4.0/24")}, Keepalive: 25 * time.Second}
	want := &Config{PrivateKey: key(9), ListenPort: 6784, Peers: []Peer{peerA}}
	inSync := func() *wgtypes.Device {
		return &wgtypes.Device{PrivateKey: wgtypes.Key(key(9)), ListenPort: 6784, Peers: []wgtypes.Peer{{
			PublicKey: wgtypes.Key(key(1)), PresharedKey: wgtypes.Key(key(11)),
			// The device may list the ranges in another order and v4 as 16 bytes.
			Endpoint:                    &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 6784},
			PersistentKeepaliveInterval: 25 * time.Second,
			AllowedIPs: []net.IPNet{*ipNet(netip.MustParsePrefix("10.32.4.0/24")),
				{IP: net.ParseIP("10.32.0.0"), Mask: net.CIDRMask(24, 32)}},
		}}}
	}

	t.Run("in sync", func(t *testing.T) {
		if c, changed := wgDiff(inSync(), want, nil); changed {
			t.Errorf("changed: %+v", c)
		}
	})
	t.Run("empty device", func(t *testing.T) {
		c, changed := wgDiff(&wgtypes.Device{}, want, nil)
		if !changed || c.PrivateKey == nil || c.ListenPort == nil || len(c.Peers) != 1 {
			t.Fatalf("got %+v", c)
		}
		p := c.Peers[0]
		if p.UpdateOnly || !p.ReplaceAllowedIPs || len(p.AllowedIPs) != 2 || p.PresharedKey == nil ||
			p.Endpoint.String() != "192.0.2.1:6784" || *p.PersistentKeepaliveInterval != 25*time.Second {
			t.Errorf("new peer = %+v", p)
		}
	})
	t.Run("stale peer removed", func(t *testing.T) {
		d := inSync()
		d.Peers = append(d.Peers, wgtypes.Peer{PublicKey: wgtypes.Key(key(2))})
		c, changed := wgDiff(d, want, nil)
		if !changed || len(c.Peers) != 1 || !c.Peers[0].Remove || c.Peers[0].PublicKey != wgtypes.Key(key(2)) {
			t.Errorf("got %+v", c)
		}
	})
	t.Run("allowed IPs follow", func(t *testing.T) {
		d := inSync()
		d.Peers[0].AllowedIPs = d.Peers[0].AllowedIPs[:1]
		c, changed := wgDiff(d, want, nil)
		if !changed || len(c.Peers) != 1 || !c.Peers[0].UpdateOnly || !c.Peers[0].ReplaceAllowedIPs ||
			c.Peers[0].PresharedKey != nil || c.Peers[0].Endpoint != nil {
			t.Errorf("got %+v", c)
		}
	})
	t.Run("roamed endpoint kept", func(t *testing.T) {
		d := inSync()
		d.Peers[0].Endpoint = udp("198.51.100.7:40000")
		if c, changed := wgDiff(d, want, want); changed {
			t.Errorf("a roamed endpoint was reset although the desired one did not change: %+v", c)
		}
		// Without history (a restarted daemon), or when the desired
		// endpoint changes, it is set.
		if c, changed := wgDiff(d, want, nil); !changed || c.Peers[0].Endpoint.String() != "192.0.2.1:6784" {
			t.Errorf("no history: %+v", c)
		}
		prev := want.Clone()
		prev.Peers[0].Endpoint = netip.MustParseAddrPort("192.0.2.99:6784")
		if c, changed := wgDiff(d, want, prev); !changed || c.Peers[0].Endpoint.String() != "192.0.2.1:6784" {
			t.Errorf("moved endpoint: %+v", c)
		}
	})
	t.Run("psk and keepalive", func(t *testing.T) {
		d := inSync()
		d.Peers[0].PresharedKey = wgtypes.Key{}
		d.Peers[0].PersistentKeepaliveInterval = 0
		c, changed := wgDiff(d, want, nil)
		if !changed || c.Peers[0].PresharedKey == nil || *c.Peers[0].PresharedKey != wgtypes.Key(key(11)) ||
			*c.Peers[0].PersistentKeepaliveInterval != 25*time.Second || c.Peers[0].ReplaceAllowedIPs {
			t.Errorf("got %+v", c)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	good := func() *Config {
		return &Config{PrivateKey: key(9), BridgeAddr: netip.MustParsePrefix("10.32.0.1/32"),
			LocalRanges: []netip.Prefix{netip.MustParsePrefix("10.32.0.0/24")}, ClusterRange: netip.MustParsePrefix("10.32.0.0/12")}
	}
	c, err := good().withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	withHosts := good()
	withHosts.LocalHosts = []netip.Prefix{netip.MustParsePrefix("10.33.0.5/32")}
	withHosts.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.32.0.9/32")}
	if err := withHosts.Validate(); err != nil {
		t.Errorf("host prefixes refused: %v", err)
	}
	if c.ListenPort != DefaultListenPort || c.MTU != DefaultMTU || c.BridgeName != DefaultBridgeName {
		t.Errorf("defaults not applied: %+v", c)
	}
	for name, mutate := range map[string]func(*Config){
		"zero key":               func(c *Config) { c.PrivateKey = crypto.Key{} },
		"bridge not host":        func(c *Config) { c.BridgeAddr = netip.MustParsePrefix("10.32.0.1/24") },
		"bridge outside":         func(c *Config) { c.BridgeAddr = netip.MustParsePrefix("10.99.0.1/32") },
		"range outside":          func(c *Config) { c.LocalRanges = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")} },
		"range unmasked":         func(c *Config) { c.LocalRanges = []netip.Prefix{netip.MustParsePrefix("10.32.0.1/24")} },
		"MTU too small":          func(c *Config) { c.MTU = 1000 },
		"bridge name too long":   func(c *Config) { c.BridgeName = "a-very-long-bridge-name" },
		"local host not a host":  func(c *Config) { c.LocalHosts = []netip.Prefix{netip.MustParsePrefix("10.33.0.0/24")} },
		"local host outside":     func(c *Config) { c.LocalHosts = []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32")} },
		"remote host not a host": func(c *Config) { c.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.32.0.0/30")} },
		"remote host outside":    func(c *Config) { c.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32")} },
		"host local and remote": func(c *Config) {
			c.LocalHosts = []netip.Prefix{netip.MustParsePrefix("10.33.0.5/32")}
			c.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.33.0.5/32")}
		},
		"duplicate peer": func(c *Config) {
			c.Peers = []Peer{{PublicKey: key(1)}, {PublicKey: key(1)}}
		},
	} {
		c := good()
		mutate(c)
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestConfigCloneEqual(t *testing.T) {
	a := &Config{PrivateKey: key(1), Peers: []Peer{{PublicKey: key(2), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}}}
	b := a.Clone()
	if !a.Equal(b) {
		t.Fatal("clone differs")
	}
	b.Peers[0].AllowedIPs[0] = netip.MustParsePrefix("10.0.1.0/24")
	if a.Equal(b) || a.Peers[0].AllowedIPs[0] != netip.MustParsePrefix("10.0.0.0/24") {
		t.Error("clone shares AllowedIPs with the original")
	}
	a.LocalHosts = []netip.Prefix{netip.MustParsePrefix("10.0.9.1/32")}
	a.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.0.0.7/32")}
	c := a.Clone()
	if !a.Equal(c) {
		t.Fatal("clone with host prefixes differs")
	}
	c.LocalHosts[0] = netip.MustParsePrefix("10.0.9.2/32")
	if a.Equal(c) || a.LocalHosts[0] != netip.MustParsePrefix("10.0.9.1/32") {
		t.Error("clone shares LocalHosts with the original, or Equal ignores them")
	}
	c = a.Clone()
	c.RemoteHosts = nil
	if a.Equal(c) {
		t.Error("Equal ignores RemoteHosts")
	}
}

func TestKeepPeers(t *testing.T) {
	k := func(b byte) wgtypes.Key { return wgtypes.Key{b} }
	port := 6784
	tests := []struct {
		name        string
		in          wgtypes.Config
		wantPeers   int
		wantKept    int
		wantChanged bool
	}{
		{"adopted removals", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k(1), Remove: true}, {PublicKey: k(2), Remove: true}}}, 0, 2, false},
		{"removal and addition", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k(1), Remove: true}, {PublicKey: k(3)}}}, 1, 1, true},
		{"removal and port", wgtypes.Config{ListenPort: &port, Peers: []wgtypes.PeerConfig{{PublicKey: k(1), Remove: true}}}, 0, 1, true},
		// k(4) is not an adopted peer: a config of this process named it.
		{"own peer removed", wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k(4), Remove: true}}}, 1, 0, true},
		{"nothing", wgtypes.Config{}, 0, 0, false},
	}
	keep := map[wgtypes.Key]bool{k(1): true, k(2): true}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, kept, changed := keepPeers(tt.in, keep)
			if len(out.Peers) != tt.wantPeers || kept != tt.wantKept || changed != tt.wantChanged {
				t.Fatalf("keepPeers = %d peers, kept %d, changed %v; want %d, %d, %v", len(out.Peers), kept, changed, tt.wantPeers, tt.wantKept, tt.wantChanged)
			}
			for _, p := range out.Peers {
				if p.Remove && keep[p.PublicKey] {
					t.Fatalf("the removal of an adopted peer survived: %+v", p)
				}
			}
		})
	}
}

// Of two nodes adding each other, exactly one sets the keepalive (and so
// initiates) at once; the next diff gives the other its keepalive.
func TestHoldFirstKeepalives(t *testing.T) {
	ka := 25 * time.Second
	pubA, pubB := wgtypes.Key(key(1)), wgtypes.Key(key(2))
	newPeer := func(pub wgtypes.Key, ka time.Duration) wgtypes.PeerConfig {
		return wgtypes.PeerConfig{PublicKey: pub, PersistentKeepaliveInterval: &ka}
	}
	tests := []struct {
		name     string
		self     wgtypes.Key
		peer     wgtypes.PeerConfig
		wantHeld int
		wantKA   time.Duration
	}{
		{"smaller key initiates at once", pubA, newPeer(pubB, ka), 0, ka},
		{"larger key waits", pubB, newPeer(pubA, ka), 1, 0},
		{"no keepalive configured", pubB, newPeer(pubA, 0), 0, 0},
		{"an update is not held", pubB, wgtypes.PeerConfig{PublicKey: pubA, UpdateOnly: true, PersistentKeepaliveInterval: &ka}, 0, ka},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, held := holdFirstKeepalives(wgtypes.Config{Peers: []wgtypes.PeerConfig{tc.peer}}, tc.self)
			if held != tc.wantHeld || *c.Peers[0].PersistentKeepaliveInterval != tc.wantKA {
				t.Fatalf("held %d, keepalive %v; want %d, %v", held, *c.Peers[0].PersistentKeepaliveInterval, tc.wantHeld, tc.wantKA)
			}
		})
	}

	// The larger key's device, with the peer added without keepalive: the
	// next diff (the release pass or any Set) restores it.
	want := &Config{PrivateKey: key(9), ListenPort: 6784, Peers: []Peer{{PublicKey: key(1), Keepalive: ka}}}
	dev := &wgtypes.Device{PrivateKey: wgtypes.Key(key(9)), ListenPort: 6784, Peers: []wgtypes.Peer{{PublicKey: pubA}}}
	c, changed := wgDiff(dev, want, want)
	if !changed || len(c.Peers) != 1 || !c.Peers[0].UpdateOnly || c.Peers[0].PersistentKeepaliveInterval == nil || *c.Peers[0].PersistentKeepaliveInterval != ka {
		t.Fatalf("diff after a held keepalive: %+v", c)
	}
}
