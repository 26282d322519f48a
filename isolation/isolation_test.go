package isolation

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
)

// testConfig is a config with ports pods, named and addressed as mesh-cni
// and the daemon do.
func testConfig(ports int) Config {
	cfg := Config{Bridge: "mesh", PortPrefix: "vmesh", Trusted: []string{"mesh-wg"}, ClusterRange: netip.MustParsePrefix("10.32.0.0/12")}
	for i := range ports {
		cfg.Ports = append(cfg.Ports, testPort(i))
	}
	return cfg
}

func testPort(i int) Port {
	a := netip.AddrFrom4([4]byte{10, 32, byte((10 + i) >> 8), byte(10 + i)})
	return Port{Name: fmt.Sprintf("vmesh%08x", i), MAC: MACFor(a), Addr: a}
}

func TestConfigEqual(t *testing.T) {
	base := testConfig(3)
	tests := []struct {
		name   string
		change func(c *Config)
		equal  bool
	}{
		{"same", func(c *Config) {}, true},
		{"ports reordered", func(c *Config) { c.Ports[0], c.Ports[2] = c.Ports[2], c.Ports[0] }, true},
		{"port repeated", func(c *Config) { c.Ports = append(c.Ports, c.Ports[1]) }, true},
		{"trusted repeated", func(c *Config) { c.Trusted = append(c.Trusted, "mesh-wg") }, true},
		{"port gone", func(c *Config) { c.Ports = c.Ports[:2] }, false},
		{"port added", func(c *Config) { c.Ports = append(c.Ports, testPort(7)) }, false},
		{"other MAC", func(c *Config) { c.Ports[1].MAC = net.HardwareAddr{2, 0, 0, 0, 0, 1} }, false},
		{"other address", func(c *Config) { c.Ports[1].Addr = netip.MustParseAddr("10.32.9.9") }, false},
		{"IPv6 address", func(c *Config) { c.Ports[1].Addr6 = netip.MustParseAddr("fd00::9") }, false},
		{"legacy", func(c *Config) { c.Ports[1].Legacy = true }, false},
		{"other name", func(c *Config) { c.Ports[1].Name = "vmeshx" }, false},
		{"other bridge", func(c *Config) { c.Bridge = "br0" }, false},
		{"other prefix", func(c *Config) { c.PortPrefix = "veth" }, false},
		{"other trusted", func(c *Config) { c.Trusted = []string{"wg0"} }, false},
		{"other range", func(c *Config) { c.ClusterRange = netip.MustParsePrefix("10.96.0.0/12") }, false},
		{"IPv6 range", func(c *Config) { c.ClusterRange6 = netip.MustParsePrefix("fd00::/64") }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig(3)
			tt.change(&c)
			if got := base.Equal(c); got != tt.equal {
				t.Errorf("Equal = %v, want %v:\n%s\n%s", got, tt.equal, base, c)
			}
			if got := c.Equal(base); got != tt.equal {
				t.Errorf("Equal is not symmetric: %v, want %v", got, tt.equal)
			}
			// Equal stands for comparing the renderings, which the
			// daemon did before.
			if same := base.String() == c.String(); same != tt.equal {
				t.Errorf("String equality = %v, Equal = %v", same, tt.equal)
			}
		})
	}
}

// TestConfigEqualMatchesString compares random configs both ways.
func TestConfigEqualMatchesString(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func() Config {
		c := testConfig(0)
		for range rng.IntN(4) {
			p := testPort(rng.IntN(4))
			p.Legacy = rng.IntN(3) == 0
			if rng.IntN(3) == 0 {
				p.Addr6 = netip.AddrFrom16([16]byte{0xfd, 15: byte(rng.IntN(3))})
			}
			c.Ports = append(c.Ports, p)
		}
		return c
	}
	for range 2000 {
		a, b := random(), random()
		if a.Equal(b) != (a.String() == b.String()) {
			t.Fatalf("Equal = %v for\n%s\n%s", a.Equal(b), a, b)
		}
	}
}

// The comparison every allocation makes on a node with 1 000 pods, by
// rendering (before) and by Equal.
func BenchmarkConfigCompare(b *testing.B) {
	c, d := testConfig(1000), testConfig(1000)
	b.Run("String", func(b *testing.B) {
		for b.Loop() {
			if c.String() != d.String() {
				b.Fatal("differ")
			}
		}
	})
	b.Run("Equal", func(b *testing.B) {
		for b.Loop() {
			if !c.Equal(d) {
				b.Fatal("differ")
			}
		}
	})
}
