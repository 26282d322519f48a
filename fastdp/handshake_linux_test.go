package fastdp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/testnet"
)

// crossedRetry is wireguard-go's handshake retry (REKEY_TIMEOUT, 5 s): a
// first packet that waits for it means both nodes' first initiations were
// lost. The bound below stays well under it and far above the ~100 ms
// the staggered handshake takes, so load cannot make it flake.
const crossedRetry = 5 * time.Second

// Two nodes that add each other at the same moment (a node joining) have a
// session well before WireGuard's 5 s handshake retry: only one of them
// initiates at once, so their initiations do not cross.
func TestSimultaneousAddHandshakesAtOnce(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := twoNodes(t)
	dpA, dpB := a.open(t, ctx, ModeUserspace), b.open(t, ctx, ModeUserspace)
	// The first configuration, without peers (a new node's first Set).
	for _, x := range []struct {
		dp  Dataplane
		cfg *Config
	}{{dpA, a.config(t)}, {dpB, b.config(t)}} {
		if err := x.dp.Set(ctx, x.cfg); err != nil {
			t.Fatalf("first Set: %v", err)
		}
	}
	cfgA, cfgB := a.config(t, b), b.config(t, a)
	cfgA.Peers[0].Keepalive, cfgB.Peers[0].Keepalive = 25*time.Second, 25*time.Second
	start := time.Now()
	var wg sync.WaitGroup
	for _, x := range []struct {
		dp  Dataplane
		cfg *Config
	}{{dpA, cfgA}, {dpB, cfgB}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := x.dp.Set(ctx, x.cfg); err != nil {
				t.Errorf("Set: %v", err)
			}
		}()
	}
	wg.Wait()
	bound := crossedRetry * 7 / 10
	err := testnet.Poll(bound, 20*time.Millisecond, func() error {
		for _, x := range []struct {
			dp   Dataplane
			peer crypto.Key
		}{{dpA, b.pub}, {dpB, a.pub}} {
			st, err := x.dp.Stats(ctx)
			if err != nil {
				return err
			}
			if len(st) != 1 || st[0].PublicKey != x.peer || st[0].LastHandshake.IsZero() {
				return errors.New("no handshake yet")
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no session %v after both nodes added each other (WireGuard's retry is %v): %v", bound, crossedRetry, err)
	}
	t.Logf("session %v after both nodes added each other", time.Since(start).Round(time.Millisecond))
}

// The node with the larger key adds a new peer without keepalive and sets
// it firstHandshakeStagger later; in its process's first configuration (a
// restart's remembered peers) it sets it at once.
func TestFirstKeepaliveHeldByLargerKey(t *testing.T) {
	testnet.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := twoNodes(t)
	// a gets the largest of three keys, its two peers the others.
	var keys []crypto.PrivateKey
	for range 3 {
		k, err := crypto.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	pub := func(k crypto.PrivateKey) crypto.Key {
		p, err := k.Public()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	slices.SortFunc(keys, func(x, y crypto.PrivateKey) int { k1, k2 := pub(x), pub(y); return bytes.Compare(k1[:], k2[:]) })
	a.priv, a.pub = keys[2], pub(keys[2])
	const ka = 25 * time.Second
	peer := func(k crypto.PrivateKey, rng string) Peer {
		return Peer{PublicKey: pub(k), Endpoint: netip.AddrPortFrom(b.under, DefaultListenPort),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix(rng)}, Keepalive: ka}
	}
	dp := a.open(t, ctx, ModeUserspace)
	d := dp.(*dataplane)
	keepalive := func(k crypto.PrivateKey) time.Duration {
		dev, err := d.wg.Device(d.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range dev.Peers {
			if p.PublicKey == wgtypes.Key(pub(k)) {
				return p.PersistentKeepaliveInterval
			}
		}
		t.Fatalf("peer missing from the device")
		return 0
	}

	cfg := a.config(t)
	cfg.Peers = []Peer{peer(keys[0], "10.40.2.0/24")}
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got := keepalive(keys[0]); got != ka {
		t.Fatalf("first configuration: keepalive %v, want %v at once", got, ka)
	}

	cfg = cfg.Clone()
	cfg.Peers = append(cfg.Peers, peer(keys[1], "10.40.3.0/24"))
	if err := dp.Set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got := keepalive(keys[1]); got != 0 {
		t.Fatalf("a peer added later, with a smaller key: keepalive %v at once, want it held", got)
	}
	if err := testnet.Poll(10*time.Second, 20*time.Millisecond, func() error {
		if got := keepalive(keys[1]); got != ka {
			return fmt.Errorf("keepalive %v, want %v", got, ka)
		}
		return nil
	}); err != nil {
		t.Fatalf("held keepalive never set: %v", err)
	}
}
