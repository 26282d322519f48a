package fastdp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

// relayTriangle is three namespaces, a - r - x, with underlay links a-r
// and r-x only: a and x reach each other only through r.
type relayTriangle struct {
	a, r, x *node
	// e2e addresses of a and x (Inner.Addr).
	ae, xe netip.Prefix
	// inner device names of a and x.
	ain, xin string
}

func newRelayTriangle(t *testing.T) *relayTriangle {
	t.Helper()
	nsA, nsR, nsX := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	wire := func(ns1, dev1, addr1, ns2, dev2, addr2 string) {
		netnstest.Run(t, ns1, "ip", "link", "add", dev1, "type", "veth", "peer", "ulpeer")
		netnstest.MoveLink(t, ns1, "ulpeer", ns2)
		netnstest.Run(t, ns2, "ip", "link", "set", "ulpeer", "name", dev2)
		for _, e := range [][3]string{{ns1, dev1, addr1}, {ns2, dev2, addr2}} {
			netnstest.Run(t, e[0], "ip", "addr", "add", e[2], "dev", e[1])
			netnstest.Run(t, e[0], "ip", "link", "set", e[1], "up")
		}
	}
	wire(nsA, "ul0", "192.168.80.1/24", nsR, "ula", "192.168.80.2/24")
	wire(nsX, "ul0", "192.168.81.1/24", nsR, "ulx", "192.168.81.2/24")
	return &relayTriangle{
		a:   newNode(t, nsA, "192.168.80.1", "10.40.0.1", "10.40.0.0/24"),
		r:   newNode(t, nsR, "192.168.80.2", "10.40.1.1", "10.40.1.0/24"),
		x:   newNode(t, nsX, "192.168.81.1", "10.40.2.1", "10.40.2.0/24"),
		ae:  netip.MustParsePrefix("10.40.0.200/32"),
		xe:  netip.MustParsePrefix("10.40.2.200/32"),
		ain: "mwe" + randHex(5), xin: "mwe" + randHex(5),
	}
}

// hostPrefix is a's /32.
func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// relayedConfig is what an end (self) of the relayed pair gets from
// peer.Desired today, hop by hop: the far end's ranges on the relay's
// entry, only its probe address left on its own (broken) entry. With e2e,
// the far end's ranges go back to its own entry and into the inner
// device, and the relay's entry carries the far end's end-to-end address
// only.
func (tr *relayTriangle) relayedConfig(t *testing.T, self, far *node, relayAt netip.Addr, selfE, farE netip.Prefix, inner string, e2e bool) *Config {
	t.Helper()
	cfg := self.config(t, tr.r, far)
	for i := range cfg.Peers {
		p := &cfg.Peers[i]
		switch p.PublicKey {
		case tr.r.pub:
			p.Endpoint = netip.AddrPortFrom(relayAt, DefaultListenPort)
			if e2e {
				p.AllowedIPs = []netip.Prefix{tr.r.rng, farE}
			} else {
				p.AllowedIPs = []netip.Prefix{tr.r.rng, far.rng}
			}
		case far.pub:
			if !e2e {
				p.AllowedIPs = []netip.Prefix{hostPrefix(far.overlay)}
			}
		}
	}
	if e2e {
		psk := cfg.Peers[0].PresharedKey
		for _, p := range cfg.Peers {
			if p.PublicKey == far.pub {
				psk = p.PresharedKey
			}
		}
		cfg.Inner = &Inner{
			DeviceName: inner,
			Addr:       selfE,
			Peers: []Peer{{
				PublicKey: far.pub, PresharedKey: psk,
				Endpoint:   netip.AddrPortFrom(farE.Addr(), DefaultInnerListenPort),
				AllowedIPs: []netip.Prefix{far.rng},
				Keepalive:  25 * time.Second, // the handshake starts on configuration
			}},
			Routes: []netip.Prefix{far.rng},
			Pins:   []netip.Prefix{farE},
			Direct: []netip.Prefix{hostPrefix(far.overlay)}, // its probe address
		}
	}
	return cfg
}

// nftCounters reads the named counters of the test's forward chain.
func nftCounters(t *testing.T, ns string) map[string]int {
	t.Helper()
	out := netnstest.Run(t, ns, "nft", "list", "chain", "inet", "meshtest", "pass")
	got := map[string]int{}
	for _, m := range regexp.MustCompile(`comment "(\w+)"`).FindAllStringSubmatchIndex(out, -1) {
		name := out[m[2]:m[3]]
		line := out[strings.LastIndex(out[:m[0]], "\n")+1 : m[0]]
		if c := regexp.MustCompile(`packets (\d+)`).FindStringSubmatch(line); c != nil {
			n, _ := strconv.Atoi(c[1])
			got[name] = n
		}
	}
	return got
}

// inject sends UDP datagrams from r with a source address in a's range
// (which r takes on its loopback) to x's overlay IP, and reports whether
// x received one: a relay forging a's pods towards x.
func (tr *relayTriangle) inject(t *testing.T, forged netip.Addr) bool {
	t.Helper()
	var ln net.PacketConn
	if err := netnstest.Do(tr.x.ns, func() (err error) {
		ln, err = net.ListenPacket("udp", netip.AddrPortFrom(tr.x.overlay, 9999).String())
		return err
	}); err != nil {
		t.Fatalf("listen in x: %v", err)
	}
	defer ln.Close()
	var c net.Conn
	if err := netnstest.Do(tr.r.ns, func() (err error) {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: forged.AsSlice()}}
		c, err = d.Dial("udp", netip.AddrPortFrom(tr.x.overlay, 9999).String())
		return err
	}); err != nil {
		t.Fatalf("dial from r as %s: %v", forged, err)
	}
	defer c.Close()
	got := make(chan bool, 1)
	go func() {
		buf := make([]byte, 64)
		_ = ln.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, from, err := ln.ReadFrom(buf)
			if err != nil {
				got <- false
				return
			}
			if string(buf[:n]) == "forged" && strings.HasPrefix(from.String(), forged.String()+":") {
				got <- true
				return
			}
		}
	}()
	for i := 0; i < 10; i++ {
		_, _ = c.Write([]byte("forged"))
		time.Sleep(100 * time.Millisecond)
	}
	return <-got
}

// TestInnerDeviceThroughRelay runs the end-to-end device on the real thing:
// a and x reach each other only through r. Relayed hop by hop, r forwards
// a's packets to x in plaintext and can forge a's sources towards x (the
// control: both would make the end-to-end checks fail). With the inner
// device on both ends, the same traffic crosses r as inner WireGuard
// packets between the two end-to-end addresses only, r's forgery is
// dropped, and removing the inner device restores hop by hop.
func TestInnerDeviceThroughRelay(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	tr := newRelayTriangle(t)
	a, r, x := tr.a, tr.r, tr.x
	dpA, dpR, dpX := a.open(t, ctx, ModeUserspace), r.open(t, ctx, ModeUserspace), x.open(t, ctx, ModeUserspace)
	rToA, rToX := netip.MustParseAddr("192.168.80.2"), netip.MustParseAddr("192.168.81.2")

	cfgR := r.config(t, a, x) // r reaches both directly
	set := func(dp Dataplane, cfg *Config, who string) {
		t.Helper()
		if err := dp.Set(ctx, cfg); err != nil {
			t.Fatalf("Set %s: %v", who, err)
		}
	}
	set(dpR, cfgR, "r")
	// The probe addresses (the overlay IPs) stay on the broken direct
	// entries, as peer.Desired keeps them; what is relayed is pod
	// traffic, here from an address of each range on the loopback.
	pa, px := *a, *x
	pa.overlay, px.overlay = netip.MustParseAddr("10.40.0.10"), netip.MustParseAddr("10.40.2.10")
	netnstest.Run(t, a.ns, "ip", "addr", "add", "10.40.0.10/32", "dev", "lo")
	netnstest.Run(t, x.ns, "ip", "addr", "add", "10.40.2.10/32", "dev", "lo")
	// Counters on the relay: a's and x's overlay IPs in plaintext, and the
	// inner device's packets.
	netnstest.Run(t, r.ns, "nft", "add", "table", "inet", "meshtest")
	netnstest.Run(t, r.ns, "nft", "add", "chain", "inet", "meshtest", "pass", "{ type filter hook forward priority 0; }")
	netnstest.Run(t, r.ns, "nft", "add", "rule", "inet", "meshtest", "pass", "ip", "saddr", "{ 10.40.0.10, 10.40.2.10 }", "ip", "daddr", "{ 10.40.0.10, 10.40.2.10 }", "counter", "comment", `"plain"`)
	netnstest.Run(t, r.ns, "nft", "add", "rule", "inet", "meshtest", "pass", "udp", "dport", fmt.Sprint(DefaultInnerListenPort), "counter", "comment", `"inner"`)

	// Hop by hop, as relaying works without the inner device.
	set(dpA, tr.relayedConfig(t, a, x, rToA, tr.ae, tr.xe, tr.ain, false), "a hop by hop")
	set(dpX, tr.relayedConfig(t, x, a, rToX, tr.xe, tr.ae, tr.xin, false), "x hop by hop")
	exchange(t, ctx, &pa, &px)
	if c := nftCounters(t, r.ns); c["plain"] == 0 {
		t.Fatalf("control: relayed hop by hop, r forwarded no plaintext between a and x: %v", c)
	}
	forged := netip.MustParseAddr("10.40.0.77")
	netnstest.Run(t, r.ns, "ip", "addr", "add", "10.40.0.77/32", "dev", "lo")
	if !tr.inject(t, forged) {
		t.Fatal("control: relayed hop by hop, r could not forge a's source towards x")
	}

	// End to end.
	cfgA := tr.relayedConfig(t, a, x, rToA, tr.ae, tr.xe, tr.ain, true)
	set(dpA, cfgA, "a end to end")
	set(dpX, tr.relayedConfig(t, x, a, rToX, tr.xe, tr.ae, tr.xin, true), "x end to end")
	before := nftCounters(t, r.ns)
	exchange(t, ctx, &pa, &px)
	after := nftCounters(t, r.ns)
	t.Logf("relay's counters before the end-to-end exchange %v, after %v", before, after)
	if after["plain"] != before["plain"] {
		t.Errorf("end to end, r still forwarded %d plaintext packets between a and x", after["plain"]-before["plain"])
	}
	if after["inner"]-before["inner"] < 100 {
		t.Errorf("end to end, r forwarded %d inner packets for a megabyte each way", after["inner"]-before["inner"])
	}
	if tr.inject(t, forged) {
		t.Error("end to end, r forged a's source towards x and x received it")
	}
	// x's probe address stays on the direct path, which is broken: a
	// probe must not be answered through the relay.
	if out, err := netnstest.Exec(a.ns, "ping", "-c", "2", "-W", "1", x.overlay.String()); err == nil {
		t.Errorf("x's probe address answered through the relay:\n%s", out)
	}
	st, err := dpA.(*dataplane).InnerStats(ctx)
	if err != nil || len(st) != 1 || st[0].PublicKey != x.pub || st[0].LastHandshake.IsZero() || st[0].RxBytes < 1<<20 {
		t.Errorf("InnerStats of a = %+v, %v; want x with a handshake and over a megabyte received", st, err)
	}
	routes := ownRoutes(t, a.ns)
	for _, want := range []string{
		"10.40.2.0/24 dev " + tr.ain + " scope link src 10.40.0.1",
		"10.40.2.200 dev " + a.dev + " scope link src 10.40.0.200",
		"10.40.2.1 dev " + a.dev + " scope link src 10.40.0.1",
	} {
		if !strings.Contains(strings.Join(routes, "\n"), want) {
			t.Errorf("routes of a = %q, want %q among them", routes, want)
		}
	}
	if out := netnstest.Run(t, a.ns, "ip", "-o", "link", "show", tr.ain); !strings.Contains(out, "mtu 1340") {
		t.Errorf("inner device MTU (want the outer 1420 less %d): %s", Overhead, out)
	}
	if out := netnstest.Run(t, a.ns, "cat", "/proc/sys/net/ipv4/conf/"+tr.ain+"/rp_filter"); strings.TrimSpace(out) != "2" {
		t.Errorf("rp_filter of the inner device = %q, want 2 (loose)", out)
	}
	// Set again unchanged: nothing to do, and nothing goes.
	set(dpA, cfgA, "a again")
	if got := ownRoutes(t, a.ns); !sameSet(got, routes) {
		t.Errorf("routes changed by an unchanged Set: %q, were %q", got, routes)
	}

	// Back to hop by hop: the inner device and its routes go.
	set(dpA, tr.relayedConfig(t, a, x, rToA, tr.ae, tr.xe, tr.ain, false), "a hop by hop again")
	set(dpX, tr.relayedConfig(t, x, a, rToX, tr.xe, tr.ae, tr.xin, false), "x hop by hop again")
	if out := links(t, a.ns); strings.Contains(out, tr.ain) {
		t.Errorf("inner device left after Set without it: %s", out)
	}
	for _, r := range ownRoutes(t, a.ns) {
		if strings.Contains(r, "10.40.2.200") || strings.Contains(r, tr.ain) {
			t.Errorf("route of the inner device left: %q", r)
		}
	}
	exchange(t, ctx, &pa, &px)

	// Close leaves the inner device (a restart adopts it); Reset
	// removes it with its UAPI socket.
	set(dpA, cfgA, "a end to end again")
	for _, dp := range []Dataplane{dpA, dpR, dpX} {
		if err := dp.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	checkNoWireGuardGoroutines(t)
	if out := links(t, a.ns); !strings.Contains(out, tr.ain) {
		t.Errorf("Close removed the inner device: %s", out)
	}
	if err := Reset(ctx, Options{DeviceName: a.dev, NetNSPath: a.ns, Logger: testLogger(t)}); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	if out := links(t, a.ns); strings.Contains(out, tr.ain) {
		t.Errorf("Reset left the inner device: %s", out)
	}
	if _, err := os.Stat(uapiSocket(tr.ain)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Reset left the inner device's UAPI socket: %v", err)
	}
}

// TestInnerConfigValidate refuses inner devices Set could not apply, or
// whose packets would loop into themselves.
func TestInnerConfigValidate(t *testing.T) {
	base := func() *Config {
		return &Config{
			PrivateKey:   [32]byte{1},
			MTU:          1420,
			ClusterRange: clusterRange,
			LocalRanges:  []netip.Prefix{netip.MustParsePrefix("10.40.0.0/24")},
			Inner: &Inner{
				Addr:   netip.MustParsePrefix("10.40.0.200/32"),
				Peers:  []Peer{{PublicKey: [32]byte{2}, Endpoint: netip.MustParseAddrPort("10.40.2.200:6785"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.40.2.0/24")}}},
				Routes: []netip.Prefix{netip.MustParsePrefix("10.40.2.0/24")},
				Pins:   []netip.Prefix{netip.MustParsePrefix("10.40.2.200/32")},
				Direct: []netip.Prefix{netip.MustParsePrefix("10.40.2.1/32")},
			},
		}
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"same port as the outer device", func(c *Config) { c.Inner.ListenPort = DefaultListenPort }, "listen port"},
		{"MTU 1280 leaves enough for IPv4 inside", func(c *Config) { c.MTU = MinMTU; c.ClusterRange = netip.MustParsePrefix("10.40.0.0/16") }, ""},
		{"address not a host prefix", func(c *Config) { c.Inner.Addr = netip.MustParsePrefix("10.40.0.0/24") }, "address"},
		{"address outside the cluster range", func(c *Config) { c.Inner.Addr = netip.MustParsePrefix("192.168.1.1/32") }, "address"},
		{"route outside the cluster range", func(c *Config) { c.Inner.Routes = append(c.Inner.Routes, netip.MustParsePrefix("10.50.0.0/24")) }, "route"},
		{"endpoint not pinned", func(c *Config) { c.Inner.Pins = nil }, "not one of the pinned"},
		{"own address pinned", func(c *Config) { c.Inner.Pins = append(c.Inner.Pins, c.Inner.Addr) }, "this node's own"},
		{"device named as the bridge", func(c *Config) { c.Inner.DeviceName = DefaultBridgeName }, "bridge"},
		{"direct address pinned too", func(c *Config) { c.Inner.Direct = c.Inner.Pins }, "pinned too"},
		{"direct address not a host prefix", func(c *Config) { c.Inner.Direct = []netip.Prefix{netip.MustParsePrefix("10.40.2.0/24")} }, "direct address"},
		{"peer twice", func(c *Config) { c.Inner.Peers = append(c.Inner.Peers, c.Inner.Peers[0]) }, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.edit(c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "end-to-end device") {
				t.Fatalf("Validate = %v, want an end-to-end device error naming %q", err, tc.want)
			}
		})
	}
	// An IPv6 mesh needs 1280 inside.
	c := base()
	c.MTU = MinMTU
	c.ClusterRange6, c.BridgeAddr6 = netip.MustParsePrefix("fd00::/64"), netip.Prefix{}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "at least 1280") {
		t.Errorf("MTU %d with IPv6: %v, want refused", MinMTU, err)
	}
	// Clone is deep and Equal sees every inner field.
	c1 := base()
	c2 := c1.Clone()
	if !c1.Equal(c2) {
		t.Fatal("a clone is not Equal")
	}
	c2.Inner.Routes[0] = netip.MustParsePrefix("10.40.3.0/24")
	c2.Inner.Peers[0].AllowedIPs[0] = netip.MustParsePrefix("10.40.3.0/24")
	if c1.Inner.Routes[0] == c2.Inner.Routes[0] || c1.Inner.Peers[0].AllowedIPs[0] == c2.Inner.Peers[0].AllowedIPs[0] || c1.Equal(c2) {
		t.Error("Clone shares the inner slices, or Equal misses them")
	}
	c2 = c1.Clone()
	c2.Inner = nil
	if c1.Equal(c2) || c2.Equal(c1) {
		t.Error("Equal misses a removed inner device")
	}
}
