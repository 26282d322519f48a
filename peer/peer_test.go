package peer

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/fastdp/fastdptest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// testKey returns a fixed private key for name, so golden files are stable.
func testKey(t *testing.T, name string) crypto.PrivateKey {
	t.Helper()
	raw := sha256.Sum256([]byte("peer test key " + name))
	raw[0] &= 248
	raw[31] = (raw[31] & 127) | 64
	return crypto.NewPrivateKey(raw)
}

type world struct {
	keys map[string]crypto.PrivateKey
	pubs map[string]crypto.Key
}

func newWorld(t *testing.T, names ...string) *world {
	w := &world{keys: map[string]crypto.PrivateKey{}, pubs: map[string]crypto.Key{}}
	for _, n := range names {
		w.keys[n] = testKey(t, n)
		pub, err := w.keys[n].Public()
		if err != nil {
			t.Fatal(err)
		}
		w.pubs[n] = pub
	}
	return w
}

// testSecret is the previous release's key of the password "s3cret": the
// golden files' preshared keys are the same as that release's.
var testSecret = func() *crypto.MasterKey {
	k, err := crypto.LegacyPasswordKey([]byte("s3cret"))
	if err != nil {
		panic(err)
	}
	return k
}()

func (w *world) node(name, addr string, state api.MemberState) Node {
	return Node{Name: name, Addr: netip.MustParseAddr(addr), DPPort: 6784, PublicKey: w.pubs[name], State: state, Secret: testSecret}
}

func held(holder, addr string) HeldAddr {
	return HeldAddr{Holder: holder, Addr: netip.MustParseAddr(addr)}
}

// pfx parses prefixes.
func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func rng(cidr, owner string) RangeOwner {
	return RangeOwner{CIDR: netip.MustParsePrefix(cidr), Owner: owner}
}

// input is node a's view of a three-node mesh: everyone alive, the cluster
// range split in four.
func (w *world) input() Input {
	return Input{
		Self: "a",
		Nodes: []Node{
			w.node("a", "192.0.2.1", api.MemberAlive),
			w.node("b", "192.0.2.2", api.MemberAlive),
			w.node("c", "192.0.2.3", api.MemberAlive),
		},
		Ranges: []RangeOwner{
			rng("10.32.0.0/14", "a"),
			rng("10.36.0.0/14", "b"),
			rng("10.40.0.0/14", "c"),
			rng("10.44.0.0/14", "b"),
		},
		PrivateKey:   w.keys["a"],
		ListenPort:   6784,
		MTU:          1420,
		Keepalive:    25 * time.Second,
		ClusterRange: netip.MustParsePrefix("10.32.0.0/12"),
		OverlayIP:    netip.MustParseAddr("10.32.0.1"),
		BridgeName:   "mesh",
	}
}

// render prints a config for a golden file. The private key is replaced by
// its public key and preshared keys by a fingerprint: the golden files show
// that they are set, and equal where they should be, without holding them.
func render(b *strings.Builder, cfg *fastdp.Config, names map[crypto.Key]string, selfPub crypto.Key) {
	if cfg == nil {
		b.WriteString("config: none\n")
		return
	}
	fmt.Fprintf(b, "private_key: (redacted, public %s)\n", selfPub)
	fmt.Fprintf(b, "listen_port: %d\nmtu: %d\n", cfg.ListenPort, cfg.MTU)
	fmt.Fprintf(b, "bridge: %s %s\n", cfg.BridgeName, cfg.BridgeAddr)
	fmt.Fprintf(b, "cluster_range: %s\nlocal_ranges: %v\n", cfg.ClusterRange, cfg.LocalRanges)
	if len(cfg.LocalHosts) > 0 || len(cfg.RemoteHosts) > 0 {
		fmt.Fprintf(b, "local_hosts: %v\nremote_hosts: %v\n", cfg.LocalHosts, cfg.RemoteHosts)
	}
	for _, p := range cfg.Peers {
		fmt.Fprintf(b, "peer %s (%s)\n", names[p.PublicKey], p.PublicKey)
		fmt.Fprintf(b, "  endpoint: %s\n  allowed_ips: %v\n  keepalive: %s\n", p.Endpoint, p.AllowedIPs, p.Keepalive)
		if p.PresharedKey == (crypto.Key{}) {
			b.WriteString("  psk: none\n")
		} else {
			sum := sha256.Sum256(p.PresharedKey[:])
			fmt.Fprintf(b, "  psk: sha256:%x\n", sum[:6])
		}
	}
}

func checkGolden(t *testing.T, got string) {
	t.Helper()
	path := filepath.Join("testdata", strings.ReplaceAll(t.Name(), "/", "__")+".golden")
	path = strings.ReplaceAll(path, " ", "_")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run go test -update if the change is intended):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

type step struct {
	what  string
	input func(w *world) Input
}

func TestReconcilerGolden(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	names := map[crypto.Key]string{}
	for n, k := range w.pubs {
		names[k] = n
	}

	tests := []struct {
		name  string
		steps []step
	}{
		{"node joins", []step{
			{"a alone", func(w *world) Input {
				in := w.input()
				in.Nodes = in.Nodes[:1]
				in.Ranges = []RangeOwner{rng("10.32.0.0/12", "a")}
				return in
			}},
			{"b joins and takes half", func(w *world) Input {
				in := w.input()
				in.Nodes = in.Nodes[:2]
				in.Ranges = []RangeOwner{rng("10.32.0.0/13", "a"), rng("10.40.0.0/13", "b")}
				return in
			}},
		}},
		{"node dies", []step{
			{"all alive", (*world).input},
			{"c dead", func(w *world) Input {
				in := w.input()
				in.Nodes[2].State = api.MemberDead
				return in
			}},
			{"b left too", func(w *world) Input {
				in := w.input()
				in.Nodes[1].State = api.MemberLeft
				in.Nodes[2].State = api.MemberDead
				return in
			}},
		}},
		{"suspect keeps entry", []step{
			{"all alive", (*world).input},
			{"b suspect", func(w *world) Input {
				in := w.input()
				in.Nodes[1].State = api.MemberSuspect
				return in
			}},
		}},
		{"ranges move and AllowedIPs follow", []step{
			{"initial split", (*world).input},
			{"b's second range moves to c", func(w *world) Input {
				in := w.input()
				in.Ranges[3].Owner = "c"
				return in
			}},
			{"a takes b's first range", func(w *world) Input {
				in := w.input()
				in.Ranges[3].Owner = "c"
				in.Ranges[1].Owner = "a"
				return in
			}},
		}},
		{"held addresses routed to their holder", []step{
			{"initial split", (*world).input},
			{"a inherited c's first range; c's pod and gateway stay", func(w *world) Input {
				in := w.input()
				in.Ranges[2].Owner = "a"
				in.Ranges = append(in.Ranges, rng("10.47.0.0/16", "c"))
				in.Held = []HeldAddr{held("c", "10.40.0.1"), held("c", "10.40.0.5")}
				return in
			}},
			{"same, held listed in another order", func(w *world) Input {
				in := w.input()
				in.Ranges[2].Owner = "a"
				in.Ranges = append(in.Ranges, rng("10.47.0.0/16", "c"))
				in.Held = []HeldAddr{held("c", "10.40.0.5"), held("c", "10.40.0.1")}
				return in
			}},
			{"a's own pod in b's space, and a's gateway in c's", func(w *world) Input {
				in := w.input()
				in.Held = []HeldAddr{held("a", "10.36.0.9"), held("a", "10.40.0.2")}
				in.OverlayIP = netip.MustParseAddr("10.40.0.2")
				return in
			}},
			{"an address held by b and c is routed by its range", func(w *world) Input {
				in := w.input()
				in.Held = []HeldAddr{held("b", "10.32.0.7"), held("c", "10.32.0.7"), held("c", "10.32.0.8")}
				return in
			}},
			{"c dead: its held address goes nowhere", func(w *world) Input {
				in := w.input()
				in.Nodes[2].State = api.MemberDead
				in.Held = []HeldAddr{held("c", "10.32.0.8")}
				return in
			}},
			{"b's /32 range is c's held address", func(w *world) Input {
				in := w.input()
				in.Ranges = append(in.Ranges, rng("10.47.0.3/32", "b"), rng("10.32.0.9/32", "a"))
				in.Held = []HeldAddr{held("c", "10.47.0.3"), held("b", "10.32.0.9")}
				return in
			}},
		}},
		{"no-op when nothing changed", []step{
			{"initial", (*world).input},
			{"same input", (*world).input},
			{"same content, other order", func(w *world) Input {
				in := w.input()
				slices.Reverse(in.Nodes)
				slices.Reverse(in.Ranges)
				return in
			}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dp := fastdptest.New("")
			r := NewReconciler(dp, nil)
			var b strings.Builder
			for i, s := range tc.steps {
				before := dp.SetCount()
				changed, err := r.Apply(context.Background(), s.input(w))
				if err != nil {
					t.Fatalf("step %d (%s): %v", i+1, s.what, err)
				}
				if called := dp.SetCount() > before; called != changed {
					t.Errorf("step %d: Apply reported changed=%v but Set called=%v", i+1, changed, called)
				}
				fmt.Fprintf(&b, "## step %d: %s\nset: %v\n", i+1, s.what, changed)
				render(&b, dp.Current(), names, w.pubs["a"])
				b.WriteString("\n")
			}
			checkGolden(t, b.String())
		})
	}
}

func TestDesiredPresharedKeySymmetric(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	inA := w.input()
	inB := w.input()
	inB.Self, inB.PrivateKey = "b", w.keys["b"]
	cfgA, err := Desired(inA)
	if err != nil {
		t.Fatal(err)
	}
	cfgB, err := Desired(inB)
	if err != nil {
		t.Fatal(err)
	}
	psk := func(cfg *fastdp.Config, peer crypto.Key) crypto.Key {
		for _, p := range cfg.Peers {
			if p.PublicKey == peer {
				return p.PresharedKey
			}
		}
		t.Fatalf("peer %s missing", peer)
		return crypto.Key{}
	}
	ab, ba := psk(cfgA, w.pubs["b"]), psk(cfgB, w.pubs["a"])
	if ab != ba || ab == (crypto.Key{}) {
		t.Errorf("a->b and b->a preshared keys differ or are zero")
	}
	if psk(cfgA, w.pubs["c"]) == ab {
		t.Errorf("two pairs share a preshared key")
	}
	if !slices.Equal(cfgB.LocalRanges, []netip.Prefix{netip.MustParsePrefix("10.36.0.0/14"), netip.MustParsePrefix("10.44.0.0/14")}) {
		t.Errorf("b's local ranges = %v", cfgB.LocalRanges)
	}

	in := w.input()
	for i := range in.Nodes {
		in.Nodes[i].Secret = nil
	}
	cfg, err := Desired(in)
	if err != nil || cfg.Peers[0].PresharedKey != (crypto.Key{}) {
		t.Errorf("no password: psk set or err %v", err)
	}
}

func TestDesiredEdgeCases(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	t.Run("invalid input", func(t *testing.T) {
		for name, mutate := range map[string]func(*Input){
			"no self":        func(in *Input) { in.Self = "" },
			"no range":       func(in *Input) { in.ClusterRange = netip.Prefix{} },
			"duplicate node": func(in *Input) { in.Nodes = append(in.Nodes, in.Nodes[1]) },
			"unknown state":  func(in *Input) { in.Nodes[1].State = "sleepy" },
			"held outside the cluster range": func(in *Input) {
				in.Held = []HeldAddr{held("b", "10.99.0.1")}
			},
			"held by nobody": func(in *Input) { in.Held = []HeldAddr{held("", "10.40.0.1")} },
			"held zero":      func(in *Input) { in.Held = []HeldAddr{{Holder: "b"}} },
		} {
			in := w.input()
			mutate(&in)
			if _, err := Desired(in); err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
	})
	t.Run("same key under two names", func(t *testing.T) {
		in := w.input()
		// b restarted as b2: b is still suspect, b2 is alive on a new address.
		in.Nodes[1].State = api.MemberSuspect
		b2 := w.node("b", "192.0.2.22", api.MemberAlive)
		b2.Name = "b2"
		in.Nodes = append(in.Nodes, b2)
		in.Ranges = append(in.Ranges, rng("10.46.0.0/15", "b2"))
		cfg, err := Desired(in)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.Peers) != 2 {
			t.Fatalf("peers = %d, want 2", len(cfg.Peers))
		}
		for _, p := range cfg.Peers {
			if p.PublicKey != w.pubs["b"] {
				continue
			}
			if p.Endpoint.Addr() != netip.MustParseAddr("192.0.2.22") || len(p.AllowedIPs) != 3 {
				t.Errorf("merged peer = %+v", p)
			}
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("merged config invalid: %v", err)
		}
	})
	t.Run("skipped nodes", func(t *testing.T) {
		in := w.input()
		in.Nodes[1].PublicKey = crypto.Key{}         // not advertised yet
		in.Nodes[2].PublicKey = w.pubs["a"]          // a stale entry of ourselves
		in.Nodes = append(in.Nodes, Node{Name: "d"}) // zero state is unknown...
		in.Nodes[3].State = api.MemberAlive          // ...so give it one; no key either
		cfg, err := Desired(in)
		if err != nil || len(cfg.Peers) != 0 {
			t.Errorf("peers = %+v, err %v", cfg.Peers, err)
		}
	})
	t.Run("unknown address and default port", func(t *testing.T) {
		in := w.input()
		in.Nodes[1].Addr = netip.Addr{}
		in.Nodes[2].DPPort = 0
		in.OverlayIP = netip.Addr{}
		cfg, err := Desired(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range cfg.Peers {
			switch p.PublicKey {
			case w.pubs["b"]:
				if p.Endpoint.IsValid() {
					t.Errorf("b endpoint = %s, want none", p.Endpoint)
				}
			case w.pubs["c"]:
				if p.Endpoint.Port() != fastdp.DefaultListenPort {
					t.Errorf("c endpoint = %s", p.Endpoint)
				}
			}
		}
		if cfg.BridgeAddr.IsValid() {
			t.Errorf("bridge addr = %s without an overlay IP", cfg.BridgeAddr)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("config without overlay IP invalid: %v", err)
		}
	})
}

func TestReconcilerRetriesAfterFailure(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	dp := fastdptest.New("")
	r := NewReconciler(dp, nil)
	ctx := context.Background()
	boom := errors.New("boom")

	dp.FailNext(1, boom)
	if _, err := r.Apply(ctx, w.input()); !errors.Is(err, boom) {
		t.Fatalf("Apply = %v, want boom", err)
	}
	if c := r.Counters(); c.Errors != 1 || !errors.Is(c.LastError, boom) || r.Last() != nil {
		t.Errorf("after failure: %+v, last %v", c, r.Last())
	}
	// Same input again: the failure forces a new Set.
	if changed, err := r.Apply(ctx, w.input()); err != nil || !changed {
		t.Fatalf("retry: changed=%v err=%v", changed, err)
	}
	if changed, err := r.Apply(ctx, w.input()); err != nil || changed {
		t.Fatalf("then a no-op: changed=%v err=%v", changed, err)
	}
	c := r.Counters()
	if c.Applied != 1 || c.Skipped != 1 || c.Errors != 1 || c.LastError != nil || dp.SetCount() != 2 {
		t.Errorf("counters %+v, sets %d", c, dp.SetCount())
	}
	dp.SetStats([]fastdp.PeerStats{{PublicKey: w.pubs["c"]}})
	if conns, err := r.Connections(ctx, time.Now()); err != nil || len(conns) != 1 || conns[0].Peer != "c" {
		t.Errorf("Connections = %+v, %v; want the peer named c", conns, err)
	}

	// A bad input is an error that never reaches the data plane.
	in := w.input()
	in.Nodes[1].State = "sleepy"
	if _, err := r.Apply(ctx, in); err == nil || dp.SetCount() != 2 {
		t.Errorf("bad input: err %v, sets %d", err, dp.SetCount())
	}
	if r.Counters().Errors != 2 {
		t.Errorf("errors = %d", r.Counters().Errors)
	}
}

// TestReconcilerResyncs: an unchanged config is not set again until
// ResyncInterval has passed since the data plane last accepted one; then
// it is, so that a host changed from outside is brought back (fastdp's Set
// changes only what differs). A changed config is set at once.
func TestReconcilerResyncs(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	dp := fastdptest.New("")
	r := NewReconciler(dp, nil)
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	ctx := context.Background()
	apply := func(in Input, wantChanged bool, wantSets int) {
		t.Helper()
		changed, err := r.Apply(ctx, in)
		if err != nil || changed != wantChanged || dp.SetCount() != wantSets {
			t.Fatalf("at %v: changed=%v err=%v sets=%d; want changed=%v sets=%d", now, changed, err, dp.SetCount(), wantChanged, wantSets)
		}
	}
	apply(w.input(), true, 1)
	now = now.Add(ResyncInterval - time.Second)
	apply(w.input(), false, 1) // unchanged, not due
	now = now.Add(time.Second)
	apply(w.input(), true, 2) // due: set again
	now = now.Add(time.Second)
	apply(w.input(), false, 2) // the resync restarted the interval
	in := w.input()
	in.Nodes = in.Nodes[:2]
	apply(in, true, 3) // a change is set at once
	now = now.Add(ResyncInterval / 2)
	apply(in, false, 3)
	if c := r.Counters(); c.Applied != 3 || c.Skipped != 3 {
		t.Errorf("counters %+v; want 3 applied (one a resync), 3 skipped", c)
	}
}

// TestReconcilerOwnsItsState: readiness, since when each peer is
// configured (which decides "connecting" versus "failed") and the run counts
// live in the reconciler, change only when Apply runs (never when someone
// reads them), and forget peers that are gone.
func TestReconcilerOwnsItsState(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	dp := fastdptest.New("")
	r := NewReconciler(dp, nil)
	t0 := time.Unix(1_000_000, 0)
	now := t0
	r.now = func() time.Time { return now }
	ctx := context.Background()
	dp.SetStats([]fastdp.PeerStats{{PublicKey: w.pubs["b"]}, {PublicKey: w.pubs["c"]}}) // no handshake yet
	state := func(name string, at time.Time) api.ConnState {
		t.Helper()
		conns, err := r.Connections(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Peer == name {
				return c.State
			}
		}
		t.Fatalf("no connection named %s in %+v", name, conns)
		return ""
	}

	in := w.input()
	in.OverlayIP = netip.Addr{}
	if _, err := r.Apply(ctx, in); err != nil {
		t.Fatal(err)
	}
	if r.Counters().Ready {
		t.Fatal("ready before any config with a bridge address")
	}
	for range 3 { // reads have no side effects
		if got := state("b", t0.Add(time.Minute)); got != api.ConnConnecting {
			t.Fatalf("b one minute after it was configured: %s, want connecting", got)
		}
	}
	if got := state("b", t0.Add(ConnectGrace+time.Second)); got != api.ConnFailed {
		t.Fatalf("b past the grace: %s, want failed", got)
	}
	now = t0.Add(time.Minute)
	in = w.input()
	if _, err := r.Apply(ctx, in); err != nil {
		t.Fatal(err)
	}
	c := r.Counters()
	if !c.Ready || c.Runs() != 2 {
		t.Fatalf("after a config with the bridge address: %+v, runs %d", c, c.Runs())
	}
	if got := state("b", t0.Add(ConnectGrace+time.Second)); got != api.ConnFailed {
		t.Errorf("a later config restarted b's grace: %s", got)
	}
	// c leaves the config, comes back later: its grace starts again.
	in.Nodes = slices.DeleteFunc(slices.Clone(in.Nodes), func(n Node) bool { return n.Name == "c" })
	now = t0.Add(2 * time.Minute)
	if _, err := r.Apply(ctx, in); err != nil {
		t.Fatal(err)
	}
	now = t0.Add(3 * time.Minute)
	if _, err := r.Apply(ctx, w.input()); err != nil {
		t.Fatal(err)
	}
	if got := state("c", now.Add(time.Minute)); got != api.ConnConnecting {
		t.Errorf("c a minute after it came back: %s, want connecting", got)
	}
	if got := state("b", now.Add(time.Minute)); got != api.ConnFailed {
		t.Errorf("b, configured throughout without a handshake: %s, want failed", got)
	}
}

// adoptingDP is a data plane that says it still keeps peers of an adopted
// device (fastdp.AdoptGrace) until told otherwise.
type adoptingDP struct {
	*fastdptest.Dataplane
	keeping bool
}

func (a *adoptingDP) Adopting() bool { return a.keeping }

func TestReconcilerSetsAgainWhileAdopting(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	dp := &adoptingDP{Dataplane: fastdptest.New(""), keeping: true}
	r := NewReconciler(dp, nil)
	ctx := context.Background()
	for i := range 3 {
		if _, err := r.Apply(ctx, w.input()); err != nil {
			t.Fatal(err)
		}
		if dp.SetCount() != i+1 {
			t.Fatalf("apply %d while adopting: %d sets, want %d", i+1, dp.SetCount(), i+1)
		}
	}
	dp.keeping = false
	if changed, err := r.Apply(ctx, w.input()); err != nil || changed || dp.SetCount() != 3 {
		t.Fatalf("unchanged input after the grace: changed=%v err=%v sets=%d, want a skip", changed, err, dp.SetCount())
	}
}

// TestDesiredDualStack: in a dual-stack mesh each peer's AllowedIPs hold
// the ranges it owns in both rings, held addresses become /32 or /128 host
// prefixes, and the data plane gets the IPv6 cluster range, this node's
// IPv6 ranges and its IPv6 gateway; an IPv6 range beside an IPv6 range,
// or a held address outside both ranges, is refused.
func TestDesiredDualStack(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	in := w.input()
	in.ClusterRange6 = netip.MustParsePrefix("fd32::/48")
	in.OverlayIP6 = netip.MustParseAddr("fd32::1")
	in.Ranges = append(in.Ranges,
		rng("fd32::/81", "a"), rng("fd32::8000:0:0/82", "b"), rng("fd32::c000:0:0/82", "c"))
	in.Held = []HeldAddr{held("c", "fd32::5"), held("a", "fd32::8000:0:7"), held("b", "10.40.0.9")}
	cfg, err := Desired(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the data plane refuses the dual-stack config: %v", err)
	}
	if cfg.ClusterRange6 != in.ClusterRange6 || cfg.BridgeAddr6 != netip.MustParsePrefix("fd32::1/128") || cfg.BridgeAddr != netip.MustParsePrefix("10.32.0.1/32") {
		t.Errorf("cluster range 6 %s, bridge %s and %s", cfg.ClusterRange6, cfg.BridgeAddr, cfg.BridgeAddr6)
	}
	wantLocal := []netip.Prefix{netip.MustParsePrefix("10.32.0.0/14"), netip.MustParsePrefix("fd32::/81")}
	if !slices.Equal(cfg.LocalRanges, wantLocal) {
		t.Errorf("local ranges %v, want %v", cfg.LocalRanges, wantLocal)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("fd32::8000:0:7/128")}; !slices.Equal(cfg.LocalHosts, want) {
		t.Errorf("local hosts %v, want %v", cfg.LocalHosts, want)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("fd32::5/128")}; !slices.Equal(cfg.RemoteHosts, want) {
		t.Errorf("remote hosts %v, want %v (c's pod in a's IPv6 range)", cfg.RemoteHosts, want)
	}
	allowed := map[crypto.Key][]netip.Prefix{}
	for _, p := range cfg.Peers {
		allowed[p.PublicKey] = p.AllowedIPs
	}
	for name, want := range map[string][]string{
		"b": {"10.36.0.0/14", "10.40.0.9/32", "10.44.0.0/14", "fd32::8000:0:0/82"},
		"c": {"10.40.0.0/14", "fd32::5/128", "fd32::c000:0:0/82"},
	} {
		var wp []netip.Prefix
		for _, s := range want {
			wp = append(wp, netip.MustParsePrefix(s))
		}
		if got := allowed[w.pubs[name]]; !slices.Equal(got, wp) {
			t.Errorf("AllowedIPs of %s = %v, want %v", name, got, wp)
		}
	}

	bad := in
	bad.Held = []HeldAddr{held("b", "fd33::1")}
	if _, err := Desired(bad); err == nil || !strings.Contains(err.Error(), "outside the cluster range") {
		t.Errorf("a held address outside both ranges: %v", err)
	}
	bad = in
	bad.ClusterRange = netip.MustParsePrefix("fd40::/48")
	if _, err := Desired(bad); err == nil || !strings.Contains(err.Error(), "want IPv4 and IPv6") {
		t.Errorf("two IPv6 cluster ranges: %v", err)
	}
}
