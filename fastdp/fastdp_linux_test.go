package fastdp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// node is one side of the two-namespace setup.
type node struct {
	ns      string
	dev     string
	priv    crypto.PrivateKey
	pub     crypto.Key
	under   netip.Addr
	overlay netip.Addr
	rng     netip.Prefix
}

func newNode(t *testing.T, ns string, under, overlay string, rng string) *node {
	t.Helper()
	priv, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := priv.Public()
	if err != nil {
		t.Fatal(err)
	}
	return &node{
		ns: ns, dev: "mwg" + randHex(5), priv: priv, pub: pub,
		under: netip.MustParseAddr(under), overlay: netip.MustParseAddr(overlay), rng: netip.MustParsePrefix(rng),
	}
}

var clusterRange = netip.MustParsePrefix("10.40.0.0/16")

func (n *node) config(t *testing.T, peers ...*node) *Config {
	t.Helper()
	cfg := &Config{
		PrivateKey:   n.priv.Bytes(),
		ListenPort:   DefaultListenPort,
		MTU:          1420,
		BridgeAddr:   netip.PrefixFrom(n.overlay, 32),
		LocalRanges:  []netip.Prefix{n.rng},
		ClusterRange: clusterRange,
	}
	for _, p := range peers {
		psk, err := crypto.PresharedKey([]byte("test password"), n.pub, p.pub)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Peers = append(cfg.Peers, Peer{
			PublicKey:    p.pub,
			PresharedKey: psk,
			Endpoint:     netip.AddrPortFrom(p.under, DefaultListenPort),
			AllowedIPs:   []netip.Prefix{p.rng},
		})
	}
	return cfg
}

func (n *node) open(t *testing.T, ctx context.Context, mode string) Dataplane {
	t.Helper()
	return n.openLogged(t, ctx, mode, testLogger(t).With("node", n.dev))
}

// openLogged is open with the data plane's log going to log.
func (n *node) openLogged(t *testing.T, ctx context.Context, mode string, log *slog.Logger) Dataplane {
	t.Helper()
	dp, err := New(ctx, Options{Mode: mode, DeviceName: n.dev, Logger: log, NetNSPath: n.ns})
	if err != nil {
		t.Fatalf("New(%s): %v", n.dev, err)
	}
	t.Cleanup(func() { dp.Close() }) // Close is idempotent; this covers failures
	return dp
}

// twoNodes makes two namespaces joined by a veth pair (the underlay).
func twoNodes(t *testing.T) (a, b *node) {
	nsA, nsB := netnstest.New(t), netnstest.New(t)
	// Made in A, B's end moved over and given the same name there.
	netnstest.Run(t, nsA, "ip", "link", "add", "ul0", "type", "veth", "peer", "ulb")
	netnstest.MoveLink(t, nsA, "ulb", nsB)
	netnstest.Run(t, nsB, "ip", "link", "set", "ulb", "name", "ul0")
	for _, x := range []struct{ ns, addr string }{{nsA, "192.168.77.1/24"}, {nsB, "192.168.77.2/24"}} {
		netnstest.Run(t, x.ns, "ip", "addr", "add", x.addr, "dev", "ul0")
		netnstest.Run(t, x.ns, "ip", "link", "set", "ul0", "up")
	}
	a = newNode(t, nsA, "192.168.77.1", "10.40.0.1", "10.40.0.0/24")
	b = newNode(t, nsB, "192.168.77.2", "10.40.1.1", "10.40.1.0/24")
	return a, b
}

// exchange sends a megabyte over TCP from a's namespace to b's overlay IP
// and checks the echo, which also exercises the TUN segmentation offloads.
func exchange(t *testing.T, ctx context.Context, a, b *node) {
	t.Helper()
	var ln net.Listener
	if err := netnstest.Do(b.ns, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(b.overlay, 7000).String())
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", b.ns, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = io.Copy(c, c)
	}()

	var c net.Conn
	if err := netnstest.Do(a.ns, func() error {
		// The first SYN triggers the handshake; retry briefly.
		var err error
		for i := 0; i < 20 && ctx.Err() == nil; i++ {
			d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: a.overlay.AsSlice()}}
			if c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(b.overlay, 7000).String()); err == nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return err
	}); err != nil {
		t.Fatalf("dial %s over the overlay: %v", b.overlay, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs: got %d bytes, want %d", len(got), len(data))
	}
}

// ownRoutes lists the routes mesh installed, as iproute2 shows them.
func ownRoutes(t *testing.T, ns string) []string {
	t.Helper()
	out := strings.TrimSpace(netnstest.Run(t, ns, "ip", "route", "show", "proto", fmt.Sprint(RouteProtocol)))
	if out == "" {
		return nil
	}
	// "linkdown" comes and goes with the TUN's carrier (whether a process
	// holds the device open), which is not what these tests compare.
	var rs []string
	for _, r := range strings.Split(out, "\n") {
		rs = append(rs, strings.TrimSpace(strings.ReplaceAll(r, " linkdown", "")))
	}
	return rs
}

func links(t *testing.T, ns string) string {
	return netnstest.Run(t, ns, "ip", "-o", "link", "show")
}

func handshaked(t *testing.T, ctx context.Context, dp Dataplane, peer crypto.Key) PeerStats {
	t.Helper()
	st, err := dp.Stats(ctx)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	for _, s := range st {
		if s.PublicKey == peer {
			if s.LastHandshake.IsZero() || s.RxBytes == 0 || s.TxBytes == 0 {
				t.Fatalf("peer %s: no handshake or traffic: %+v", peer, s)
			}
			return s
		}
	}
	t.Fatalf("peer %s missing from Stats: %+v", peer, st)
	return PeerStats{}
}

// checkNoWireGuardGoroutines fails when wireguard-go goroutines outlive
// Close, waiting a little for ones that are already on their way out.
func checkNoWireGuardGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "golang.zx2c4.com/wireguard/") && !strings.Contains(g, "checkNoWireGuardGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d wireguard-go goroutines still running after Close:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUserspaceOverlay(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := twoNodes(t)

	dpA, dpB := a.open(t, ctx, ModeUserspace), b.open(t, ctx, ModeUserspace)
	cfgA, cfgB := a.config(t, b), b.config(t, a)
	if err := dpA.Set(ctx, cfgA); err != nil {
		t.Fatalf("Set A: %v", err)
	}
	if err := dpB.Set(ctx, cfgB); err != nil {
		t.Fatalf("Set B: %v", err)
	}
	if dpA.Kind() != ModeUserspace {
		t.Errorf("Kind = %q", dpA.Kind())
	}

	exchange(t, ctx, a, b)
	before := handshaked(t, ctx, dpA, b.pub)

	// The host state is what the package comment describes.
	routes := ownRoutes(t, a.ns)
	wantRoutes := []string{
		"10.40.0.0/24 dev mesh scope link src 10.40.0.1",
		"10.40.0.0/16 dev " + a.dev + " scope link src 10.40.0.1",
	}
	if !sameSet(routes, wantRoutes) {
		t.Errorf("routes = %q, want %q", routes, wantRoutes)
	}
	if out := netnstest.Run(t, a.ns, "ip", "-o", "addr", "show", "dev", "mesh"); !strings.Contains(out, "10.40.0.1/32") {
		t.Errorf("bridge address missing: %s", out)
	}
	if out := netnstest.Run(t, a.ns, "ip", "-o", "link", "show", a.dev); !strings.Contains(out, "mtu 1420") {
		t.Errorf("wg device MTU: %s", out)
	}
	if out := netnstest.Run(t, a.ns, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "1" {
		t.Errorf("ip_forward = %q", out)
	}

	// Set again: nothing changes, the peer keeps its session and counters.
	linksBefore := links(t, a.ns)
	if events := netlinkEvents(t, a.ns, func() {
		if err := dpA.Set(ctx, cfgA.Clone()); err != nil {
			t.Fatalf("second Set: %v", err)
		}
	}); events != "" {
		t.Errorf("a no-op Set wrote to the kernel:\n%s", events)
	}
	if got := ownRoutes(t, a.ns); !sameSet(got, routes) {
		t.Errorf("routes after second Set = %q, want %q", got, routes)
	}
	if got := links(t, a.ns); got != linksBefore {
		t.Errorf("links changed by a no-op Set:\n%s\nwas\n%s", got, linksBefore)
	}
	after := handshaked(t, ctx, dpA, b.pub)
	if !after.LastHandshake.Equal(before.LastHandshake) || after.RxBytes < before.RxBytes {
		t.Errorf("peer was reset by a no-op Set: before %+v after %+v", before, after)
	}

	// Close leaves the links and routes; a new data plane adopts them.
	if err := dpA.Close(); err != nil {
		t.Fatalf("Close A: %v", err)
	}
	if !strings.Contains(links(t, a.ns), a.dev) {
		t.Fatalf("Close removed the TUN device")
	}
	if got := ownRoutes(t, a.ns); !sameSet(got, routes) {
		t.Errorf("routes after Close = %q", got)
	}
	dpA = a.open(t, ctx, ModeAuto) // auto must pick the existing TUN
	if dpA.Kind() != ModeUserspace {
		t.Errorf("adopting Kind = %q", dpA.Kind())
	}
	if err := dpA.Set(ctx, cfgA); err != nil {
		t.Fatalf("Set after restart: %v", err)
	}
	if got := strings.Count(links(t, a.ns), a.dev); got != 1 {
		t.Errorf("%d links named %s after adoption", got, a.dev)
	}
	if got := ownRoutes(t, a.ns); !sameSet(got, routes) {
		t.Errorf("routes after adoption = %q, want %q", got, routes)
	}
	exchange(t, ctx, a, b)

	// A peer that goes away is removed from the device.
	if err := dpA.Set(ctx, a.config(t)); err != nil {
		t.Fatalf("Set without peers: %v", err)
	}
	if st, err := dpA.Stats(ctx); err != nil || len(st) != 0 {
		t.Errorf("Stats after removing the peer = %+v, %v", st, err)
	}

	for _, dp := range []Dataplane{dpA, dpB} {
		if err := dp.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	checkNoWireGuardGoroutines(t)

	// Reset removes everything, and can be repeated.
	for i := 0; i < 2; i++ {
		if err := Reset(ctx, Options{DeviceName: a.dev, NetNSPath: a.ns}); err != nil {
			t.Fatalf("Reset #%d: %v", i+1, err)
		}
	}
	if l := links(t, a.ns); strings.Contains(l, a.dev) || strings.Contains(l, " mesh:") {
		t.Errorf("links left after Reset:\n%s", l)
	}
	if r := ownRoutes(t, a.ns); len(r) != 0 {
		t.Errorf("routes left after Reset: %q", r)
	}
	if _, err := os.Stat(uapiDir + "/" + a.dev + ".sock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("UAPI socket left after Reset: %v", err)
	}
	if err := Reset(ctx, Options{DeviceName: b.dev, NetNSPath: b.ns}); err != nil {
		t.Errorf("Reset B: %v", err)
	}
}

// netlinkEvents returns what `ip monitor` sees of links, addresses and
// routes in ns while fn runs.
func netlinkEvents(t *testing.T, ns string, fn func()) string {
	t.Helper()
	var out bytes.Buffer
	mon := exec.Command("nsenter", "--net="+ns, "ip", "monitor", "link", "address", "route")
	mon.Stdout, mon.Stderr = &out, &out
	if err := mon.Start(); err != nil {
		t.Fatalf("ip monitor: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // let it subscribe
	fn()
	time.Sleep(200 * time.Millisecond)
	_ = mon.Process.Kill()
	_ = mon.Wait()
	// The kernel adds IPv6 link-local addresses (and their local routes)
	// on its own, a moment after a link first comes up; they are not ours.
	var ours []string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, "fe80:") || strings.Contains(l, "valid_lft") || strings.TrimSpace(l) == "" {
			continue
		}
		ours = append(ours, l)
	}
	return strings.Join(ours, "\n")
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[strings.TrimSpace(s)]++
	}
	for _, s := range b {
		m[strings.TrimSpace(s)]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

// kernelAvailable probes the way New does, in a throwaway namespace.
func kernelAvailable(t *testing.T) bool {
	ns := netnstest.New(t)
	dp, err := New(context.Background(), Options{Mode: ModeKernel, DeviceName: "mwg" + randHex(5), NetNSPath: ns})
	if err != nil {
		return false
	}
	dp.Close()
	return true
}

func TestModeSelection(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if kernelAvailable(t) {
		t.Skip("this host has kernel WireGuard; the fallback cannot be observed")
	}
	ns := netnstest.New(t)
	dev := "mwg" + randHex(5)

	_, err := New(ctx, Options{Mode: ModeKernel, DeviceName: dev, NetNSPath: ns})
	if !errors.Is(err, ErrKernelUnavailable) || !strings.Contains(err.Error(), "use --dataplane userspace or auto") {
		t.Errorf("kernel mode error = %v", err)
	}
	if l := links(t, ns); strings.Contains(l, "meshprobe") || strings.Contains(l, dev) {
		t.Errorf("probe left links behind:\n%s", l)
	}

	dp, err := New(ctx, Options{Mode: ModeAuto, DeviceName: dev, NetNSPath: ns})
	if err != nil {
		t.Fatalf("auto: %v", err)
	}
	defer dp.Close()
	if dp.Kind() != ModeUserspace {
		t.Errorf("auto Kind = %q, want userspace", dp.Kind())
	}

	if _, err := New(ctx, Options{Mode: "fast", DeviceName: dev, NetNSPath: ns}); err == nil {
		t.Errorf("unknown mode accepted")
	}
	netnstest.Run(t, ns, "ip", "link", "add", dev, "type", "bridge")
	if _, err := New(ctx, Options{Mode: ModeAuto, DeviceName: dev, NetNSPath: ns}); err == nil || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("a bridge in the way: err = %v", err)
	}
}

// TestSetRollback makes Set fail after it created the links and checks that
// it removes them again.
func TestSetRollback(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := netnstest.New(t)
	n := newNode(t, ns, "192.168.77.1", "10.40.0.1", "10.40.0.0/24")

	// A route that mesh did not install blocks the local range.
	netnstest.Run(t, ns, "ip", "link", "add", "blocker", "type", "veth", "peer", "blocker1")
	netnstest.Run(t, ns, "ip", "link", "set", "blocker", "up")
	netnstest.Run(t, ns, "ip", "route", "add", "10.40.0.0/24", "dev", "blocker")
	before := links(t, ns)

	dp := n.open(t, ctx, ModeUserspace)
	err := dp.Set(ctx, n.config(t))
	if err == nil || !strings.Contains(err.Error(), "10.40.0.0/24") {
		t.Fatalf("Set with a conflicting route: err = %v", err)
	}
	t.Logf("Set failed as expected: %v", err)
	if got := links(t, ns); got != before {
		t.Errorf("Set left links behind:\n%s\nwant\n%s", got, before)
	}
	if r := ownRoutes(t, ns); len(r) != 0 {
		t.Errorf("Set left routes behind: %q", r)
	}

	// Once the obstacle is gone the same data plane converges.
	netnstest.Run(t, ns, "ip", "route", "del", "10.40.0.0/24", "dev", "blocker")
	if err := dp.Set(ctx, n.config(t)); err != nil {
		t.Fatalf("Set after removing the obstacle: %v", err)
	}
	if r := ownRoutes(t, ns); len(r) != 2 {
		t.Errorf("routes = %q", r)
	}
	// Changing the ranges moves the routes: the old local route goes.
	cfg := n.config(t)
	cfg.LocalRanges = []netip.Prefix{netip.MustParsePrefix("10.40.0.0/25"), netip.MustParsePrefix("10.40.9.0/24")}
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatalf("Set with moved ranges: %v", err)
	}
	want := []string{
		"10.40.0.0/25 dev mesh scope link src 10.40.0.1",
		"10.40.9.0/24 dev mesh scope link src 10.40.0.1",
		"10.40.0.0/16 dev " + n.dev + " scope link src 10.40.0.1",
	}
	if r := ownRoutes(t, ns); !sameSet(r, want) {
		t.Errorf("routes = %q, want %q", r, want)
	}
	// Renaming the bridge replaces the old one.
	cfg.BridgeName = "mesh2"
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatalf("Set with a new bridge name: %v", err)
	}
	if l := links(t, ns); strings.Contains(l, ": mesh:") || !strings.Contains(l, ": mesh2:") {
		t.Errorf("bridges after rename:\n%s", l)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Reset(ctx, Options{DeviceName: n.dev, NetNSPath: ns}); err != nil {
		t.Fatal(err)
	}
	checkNoWireGuardGoroutines(t)
}

func TestResetRefusesRunningDataplane(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := netnstest.New(t)
	n := newNode(t, ns, "192.168.77.1", "10.40.0.1", "10.40.0.0/24")
	dp := n.open(t, ctx, ModeUserspace)
	if err := dp.Set(ctx, n.config(t)); err != nil {
		t.Fatal(err)
	}
	if err := Reset(ctx, Options{DeviceName: n.dev, NetNSPath: ns}); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("Reset while running: err = %v", err)
	}
	// A second data plane on the same device is refused, not doubled.
	other := n.open(t, ctx, ModeUserspace)
	if err := other.Set(ctx, n.config(t)); err == nil {
		t.Errorf("second data plane on %s accepted", n.dev)
	}
	other.Close()
	dp.Close()
	if err := Reset(ctx, Options{DeviceName: n.dev, NetNSPath: ns}); err != nil {
		t.Fatal(err)
	}
}

func TestDetectMTU(t *testing.T) {
	testnet.RequireRoot(t)
	ns := netnstest.New(t)
	netnstest.Run(t, ns, "ip", "link", "add", "ul0", "mtu", "9000", "type", "veth", "peer", "ul1", "mtu", "9000")
	netnstest.Run(t, ns, "ip", "addr", "add", "192.168.5.1/24", "dev", "ul0")
	netnstest.Run(t, ns, "ip", "link", "set", "ul0", "up")
	for _, tc := range []struct {
		dst  string
		want int
	}{
		{"192.168.5.7", 9000 - Overhead}, // a peer
		{"192.168.5.1", 9000 - Overhead}, // ourselves
	} {
		var got int
		err := netnstest.Do(ns, func() (err error) { got, err = DetectMTU(netip.MustParseAddr(tc.dst)); return err })
		if err != nil || got != tc.want {
			t.Errorf("DetectMTU(%s) = %d, %v; want %d", tc.dst, got, err, tc.want)
		}
	}
	err := netnstest.Do(ns, func() error { _, err := DetectMTU(netip.MustParseAddr("203.0.113.1")); return err })
	if err == nil {
		t.Errorf("DetectMTU without a route succeeded")
	}
}

// TestHostRoutes: host prefixes go to the bridge (LocalHosts) or into
// WireGuard (RemoteHosts), beside the range routes, one of them equal to a
// /32 range; an unchanged config changes no route, and a changed one
// removes the host routes it no longer names.
func TestHostRoutes(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := netnstest.New(t)
	n := newNode(t, ns, "192.168.77.1", "10.40.0.1", "10.40.0.0/24")
	var logs bytes.Buffer
	dp, err := New(ctx, Options{Mode: ModeUserspace, DeviceName: n.dev, NetNSPath: ns,
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(&logs, tWriter{t}), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })

	cfg := n.config(t)
	cfg.LocalRanges = append(cfg.LocalRanges, netip.MustParsePrefix("10.40.7.9/32"))
	cfg.LocalHosts = []netip.Prefix{netip.MustParsePrefix("10.40.5.3/32")}
	cfg.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.40.0.7/32"), netip.MustParsePrefix("10.40.7.9/32")}
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"10.40.0.0/16 dev " + n.dev + " scope link src 10.40.0.1",
		"10.40.0.0/24 dev mesh scope link src 10.40.0.1",
		"10.40.5.3 dev mesh scope link src 10.40.0.1",
		"10.40.0.7 dev " + n.dev + " scope link src 10.40.0.1",
		"10.40.7.9 dev " + n.dev + " scope link src 10.40.0.1",
	}
	if r := ownRoutes(t, ns); !sameSet(r, want) {
		t.Fatalf("routes = %q, want %q", r, want)
	}
	// The kernel picks the host route over the range.
	for dst, dev := range map[string]string{"10.40.0.7": n.dev, "10.40.0.8": "mesh", "10.40.5.3": "mesh", "10.40.5.4": n.dev} {
		if out := netnstest.Run(t, ns, "ip", "route", "get", dst); !strings.Contains(out, " dev "+dev+" ") {
			t.Errorf("route to %s: %q, want dev %s", dst, out, dev)
		}
	}

	logs.Reset()
	if err := dp.Set(ctx, cfg.Clone()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "route") {
		t.Errorf("an unchanged config touched routes:\n%s", logs.String())
	}

	cfg.LocalHosts = nil
	cfg.RemoteHosts = []netip.Prefix{netip.MustParsePrefix("10.40.0.8/32")}
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"10.40.0.0/16 dev " + n.dev + " scope link src 10.40.0.1",
		"10.40.0.0/24 dev mesh scope link src 10.40.0.1",
		"10.40.7.9 dev mesh scope link src 10.40.0.1",
		"10.40.0.8 dev " + n.dev + " scope link src 10.40.0.1",
	}
	if r := ownRoutes(t, ns); !sameSet(r, want) {
		t.Fatalf("routes after the change = %q, want %q", r, want)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Reset(ctx, Options{DeviceName: n.dev, NetNSPath: ns}); err != nil {
		t.Fatal(err)
	}
	if r := ownRoutes(t, ns); len(r) != 0 {
		t.Errorf("routes after Reset: %q", r)
	}
}

// TestSetDualStack: with an IPv6 cluster range the bridge holds both
// overlay addresses (the IPv6 one without duplicate address detection),
// both cluster ranges go into WireGuard and the node's own ranges of both
// families to the bridge, each with the source of its family, IPv6
// forwarding is on, and TCP crosses the overlay over IPv6; back to IPv4
// only, the IPv6 address and routes go.
func TestSetDualStack(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := twoNodes(t)
	cluster6 := netip.MustParsePrefix("fd40::/48")
	rng6 := map[*node]netip.Prefix{a: netip.MustParsePrefix("fd40:0:0:1::/64"), b: netip.MustParsePrefix("fd40:0:0:2::/64")}
	over6 := map[*node]netip.Addr{a: netip.MustParseAddr("fd40:0:0:1::1"), b: netip.MustParseAddr("fd40:0:0:2::1")}
	dual := func(n, p *node) *Config {
		cfg := n.config(t, p)
		cfg.ClusterRange6 = cluster6
		cfg.BridgeAddr6 = netip.PrefixFrom(over6[n], 128)
		cfg.LocalRanges = append(cfg.LocalRanges, rng6[n])
		cfg.Peers[0].AllowedIPs = append(cfg.Peers[0].AllowedIPs, rng6[p])
		return cfg
	}
	dpA, dpB := a.open(t, ctx, ModeUserspace), b.open(t, ctx, ModeUserspace)
	if err := dpA.Set(ctx, dual(a, b)); err != nil {
		t.Fatalf("Set A: %v", err)
	}
	if err := dpB.Set(ctx, dual(b, a)); err != nil {
		t.Fatalf("Set B: %v", err)
	}
	a6, b6 := *a, *b
	a6.overlay, b6.overlay = over6[a], over6[b]
	exchange(t, ctx, &a6, &b6)
	exchange(t, ctx, a, b)

	routes6 := strings.TrimSpace(netnstest.Run(t, a.ns, "ip", "-6", "route", "show", "proto", fmt.Sprint(RouteProtocol)))
	for _, want := range []string{
		"fd40::/48 dev " + a.dev,
		"fd40:0:0:1::/64 dev mesh",
		"src fd40:0:0:1::1",
	} {
		if !strings.Contains(routes6, want) {
			t.Errorf("IPv6 routes lack %q:\n%s", want, routes6)
		}
	}
	addrs := netnstest.Run(t, a.ns, "ip", "-o", "addr", "show", "dev", "mesh")
	var line6 string
	for _, l := range strings.Split(addrs, "\n") {
		if strings.Contains(l, "fd40:0:0:1::1/128") {
			line6 = l
		}
	}
	if !strings.Contains(line6, "nodad") || strings.Contains(line6, "tentative") || !strings.Contains(addrs, "10.40.0.1/32") {
		t.Errorf("bridge addresses, want both overlay addresses, the IPv6 one nodad and not tentative: %s", addrs)
	}
	if out := netnstest.Run(t, a.ns, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"); strings.TrimSpace(out) != "1" {
		t.Errorf("IPv6 forwarding = %q", out)
	}

	if err := dpA.Set(ctx, a.config(t, b)); err != nil {
		t.Fatalf("Set A back to IPv4 only: %v", err)
	}
	if out := strings.TrimSpace(netnstest.Run(t, a.ns, "ip", "-6", "route", "show", "proto", fmt.Sprint(RouteProtocol))); out != "" {
		t.Errorf("IPv6 routes left after going back to IPv4 only:\n%s", out)
	}
	if out := netnstest.Run(t, a.ns, "ip", "-o", "addr", "show", "dev", "mesh"); strings.Contains(out, "fd40") {
		t.Errorf("IPv6 bridge address left after going back to IPv4 only: %s", out)
	}
}

// TestSetRestoresDeviceChangedOutside: a Set of the config last set finds
// a WireGuard entry changed from outside (as `wg set` would) and restores
// it, with a warning, and the two nodes still reach each other. This is
// what the reconciler's resync relies on (peer.ResyncInterval).
func TestSetRestoresDeviceChangedOutside(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := twoNodes(t)
	var logs syncBuffer
	dpA := a.openLogged(t, ctx, ModeUserspace, slog.New(slog.NewTextHandler(&logs, nil)))
	dpB := b.open(t, ctx, ModeUserspace)
	cfgA := a.config(t, b)
	if err := dpA.Set(ctx, cfgA); err != nil {
		t.Fatalf("Set A: %v", err)
	}
	if err := dpB.Set(ctx, b.config(t, a)); err != nil {
		t.Fatalf("Set B: %v", err)
	}
	exchange(t, ctx, a, b)

	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	allowed := func() []string {
		t.Helper()
		dev, err := wg.Device(a.dev)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range dev.Peers {
			for _, n := range p.AllowedIPs {
				out = append(out, n.String())
			}
		}
		return out
	}
	want := allowed()
	// The entry of b also gets another range, as a stale view would give it.
	_, foreign, _ := net.ParseCIDR("10.40.7.0/24")
	if err := wg.ConfigureDevice(a.dev, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: wgtypes.Key(b.pub), UpdateOnly: true, AllowedIPs: []net.IPNet{*foreign},
	}}}); err != nil {
		t.Fatal(err)
	}
	if got := allowed(); sameSet(got, want) {
		t.Fatalf("the outside change did not take: %q", got)
	}
	if err := dpA.Set(ctx, cfgA.Clone()); err != nil {
		t.Fatalf("Set again: %v", err)
	}
	if got := allowed(); !sameSet(got, want) {
		t.Errorf("allowed IPs after Set = %q, want %q", got, want)
	}
	if !strings.Contains(logs.String(), "the WireGuard device was changed from outside: restored its peers") {
		t.Errorf("no warning of the restore in the log:\n%s", logs.String())
	}
	exchange(t, ctx, a, b)
}

// syncBuffer is a bytes.Buffer for a logger that goroutines share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
