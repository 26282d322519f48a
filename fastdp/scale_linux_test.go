package fastdp

import (
	"context"
	"crypto/rand"
	"flag"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

var scalePeers = flag.Int("fastdp.scale.peers", 1000, "WireGuard peers of TestWireGuardPeersScale")

// scalePeer is peer i of the scale test: random keys, an endpoint on the
// loopback of the test's own network namespace (nothing is ever sent
// elsewhere) and a /28 of the cluster range.
func scalePeer(t testing.TB, i int) Peer {
	t.Helper()
	priv, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := priv.Public()
	if err != nil {
		t.Fatal(err)
	}
	var psk crypto.Key
	if _, err := rand.Read(psk[:]); err != nil {
		t.Fatal(err)
	}
	base := netip.MustParseAddr("10.40.4.0").As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]) + uint32(i)*16
	rng := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 28)
	return Peer{
		PublicKey:    pub,
		PresharedKey: psk,
		Endpoint:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), DefaultListenPort),
		AllowedIPs:   []netip.Prefix{rng},
	}
}

// selfRSS is the resident memory of this process.
func selfRSS(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func heapAfterGC() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestWireGuardPeersScale configures the userspace data plane (wireguard-go
// on a TUN device, in a network namespace of its own) with 1,000 peers
// (-fastdp.scale.peers) and measures the memory this adds to the process
// and the time of Set: all peers at once, nothing changed, one peer's
// endpoint changed, one peer added, one removed. A change of one peer must
// reach the device as a change of that peer alone, not of all of them.
// The peers have no keepalive: nothing is sent (a handshake starts on a
// packet to a peer, and none is routed here).
func TestWireGuardPeersScale(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := *scalePeers
	self := newNode(t, netnstest.New(t), "192.168.77.1", "10.40.0.1", "10.40.0.0/24")
	peers := make([]Peer, n+1) // the last one is added later
	for i := range peers {
		peers[i] = scalePeer(t, i)
	}
	cfg := self.config(t)

	heap0, rss0 := heapAfterGC(), selfRSS(t)
	dp := self.open(t, ctx, ModeUserspace)
	d := dp.(*dataplane)
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	heap1, rss1 := heapAfterGC(), selfRSS(t)

	set := func(what string, c *Config, wantPeers int) time.Duration {
		t.Helper()
		start := time.Now()
		if err := dp.Set(ctx, c); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		took := time.Since(start)
		dev, err := d.wg.Device(d.name)
		if err != nil {
			t.Fatal(err)
		}
		if len(dev.Peers) != wantPeers {
			t.Fatalf("%s: the device has %d peers, want %d", what, len(dev.Peers), wantPeers)
		}
		// Bound generously (loaded 2-core machine): a reconcile is a
		// matter of seconds, not minutes.
		if took > 30*time.Second {
			t.Errorf("%s: Set took %v", what, took)
		}
		return took
	}
	// changed is the number of peers the next Set sends to the device.
	changed := func(c *Config) int {
		t.Helper()
		want, err := c.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		dev, err := d.wg.Device(d.name)
		if err != nil {
			t.Fatal(err)
		}
		change, _ := wgDiff(dev, want, d.last)
		return len(change.Peers)
	}

	full := cfg.Clone()
	full.Peers = append([]Peer(nil), peers[:n]...)
	tFull := set("all peers", full, n)
	heap2, rss2 := heapAfterGC(), selfRSS(t)

	if c := changed(full); c != 0 {
		t.Errorf("nothing changed, yet %d peers would be sent", c)
	}
	tSame := set("nothing changed", full, n)

	moved := full.Clone()
	moved.Peers[n/2].Endpoint = netip.AddrPortFrom(netip.MustParseAddr("127.2.0.1"), DefaultListenPort)
	if c := changed(moved); c != 1 {
		t.Errorf("one endpoint changed, yet %d peers would be sent", c)
	}
	tMoved := set("one endpoint changed", moved, n)

	added := moved.Clone()
	added.Peers = append(added.Peers, peers[n])
	if c := changed(added); c != 1 {
		t.Errorf("one peer added, yet %d peers would be sent", c)
	}
	tAdded := set("one peer added", added, n+1)

	removed := added.Clone()
	removed.Peers = removed.Peers[1:]
	if c := changed(removed); c != 1 {
		t.Errorf("one peer removed, yet %d peers would be sent", c)
	}
	tRemoved := set("one peer removed", removed, n)

	start := time.Now()
	if _, err := d.wg.Device(d.name); err != nil {
		t.Fatal(err)
	}
	tRead := time.Since(start)

	mib := func(b int64) float64 { return float64(b) / (1 << 20) }
	t.Logf("userspace data plane with %d WireGuard peers:", n)
	t.Logf("  memory: device with no peer +%.1f MiB RSS (+%.1f MiB heap); %d peers +%.1f MiB RSS (+%.1f MiB heap), %.1f KiB heap per peer",
		mib(rss1-rss0), mib(heap1-heap0), n, mib(rss2-rss1), mib(heap2-heap1), float64(heap2-heap1)/float64(n)/1024)
	t.Logf("  Set: all peers %v; nothing changed %v; one endpoint changed %v; one peer added %v; one removed %v; reading the device (part of every Set) %v",
		tFull.Round(time.Millisecond), tSame.Round(time.Millisecond), tMoved.Round(time.Millisecond),
		tAdded.Round(time.Millisecond), tRemoved.Round(time.Millisecond), tRead.Round(time.Millisecond))
	// Memory bound, generous: 64 KiB of heap per peer.
	if per := (heap2 - heap1) / int64(n); per > 64<<10 {
		t.Errorf("%d bytes of heap per peer", per)
	}
	if err := dp.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
