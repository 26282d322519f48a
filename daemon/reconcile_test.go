package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/attach"
	"github.com/meshnet/mesh/control"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp/fastdptest"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/kube/kubetest"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
	"github.com/meshnet/mesh/policy"
)

// testDaemon is a daemon of one node without gossip or a host: a real
// allocator that owns the whole range, a reconciler on the fake data plane,
// no CNI installation.
func testDaemon(t *testing.T) (*Daemon, *fastdptest.Dataplane) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := DefaultConfig()
	cfg.Name, cfg.NoCNI, cfg.StateDir = "n1", true, t.TempDir()
	cfg.IPAllocRange = netip.MustParsePrefix("10.32.0.0/12")
	icfg := ipam.DefaultConfig()
	icfg.Range, icfg.Self, icfg.SelfID = cfg.IPAllocRange, "n1", "0123456789abcdef0123456789abcdef"
	icfg.StateFile, icfg.InitialPeerCount, icfg.Logger = filepath.Join(cfg.StateDir, "ipam.json"), 1, log
	a, err := ipam.New(icfg, nopTransport{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		a.SetMembers(map[string]bool{"n1": true})
		a.Tick()
		if _, ok := a.OverlayIP(); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a single-node IPAM owns no range after 10 s: %+v", a.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	key, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	dp := fastdptest.New("")
	d := &Daemon{cfg: cfg, log: log, id: identity.Identity{Name: "n1"}, keys: &keyStore{}, ipam: a, dp: dp,
		rec: peer.NewReconciler(dp, log), mtu: 1420, policy: noPolicy{}, nat: noNAT{}, relayed: noRelayCounter{}}
	d.self.key = key
	return d, dp
}

func publicKey(t *testing.T) string {
	t.Helper()
	k, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.Public()
	if err != nil {
		t.Fatal(err)
	}
	return pub.String()
}

// TestReconcileOnce: one pass of the reconcile loop hands the fake data
// plane one WireGuard peer per live member with a valid key, at its
// advertised endpoint, and the node's own range on the bridge; a failing
// data plane keeps the node unready and is reported.
func TestReconcileOnce(t *testing.T) {
	self := mesh.Member{Name: "n1", Self: true, State: api.MemberAlive, Addr: netip.MustParseAddrPort("192.0.2.1:6783")}
	member := func(name string, state api.MemberState, pub string) mesh.Member {
		return mesh.Member{Name: name, State: state, Addr: netip.MustParseAddrPort("192.0.2.2:6783"),
			Meta: mesh.Meta{PublicKey: pub, DPPort: 6784}}
	}
	pubB := publicKey(t)
	tests := []struct {
		name      string
		members   []mesh.Member
		fail      error  // the data plane's next Set fails with it
		wantPeers int    // WireGuard peers in the config set
		wantReady string // "" = ready
	}{
		{name: "alone", members: []mesh.Member{self}, wantPeers: 0},
		{name: "alive peer", members: []mesh.Member{self, member("b", api.MemberAlive, pubB)}, wantPeers: 1},
		{name: "suspect peer kept", members: []mesh.Member{self, member("b", api.MemberSuspect, pubB)}, wantPeers: 1},
		{name: "dead peer removed", members: []mesh.Member{self, member("b", api.MemberDead, pubB)}, wantPeers: 0},
		{name: "peer without a valid key", members: []mesh.Member{self, member("b", api.MemberAlive, "not-a-key")}, wantPeers: 0},
		{name: "data plane fails", members: []mesh.Member{self}, fail: errors.New("netlink: device busy"), wantReady: "not ready: data plane: failed to set data plane config: netlink: device busy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, dp := testDaemon(t)
			if tt.fail != nil {
				dp.FailNext(1, tt.fail)
			}
			d.reconcileOnce(context.Background(), tt.members)
			err := d.ready()
			if tt.wantReady != "" {
				if err == nil || err.Error() != tt.wantReady {
					t.Fatalf("ready() = %v, want %q", err, tt.wantReady)
				}
				if dp.Current() != nil {
					t.Errorf("a failed Set left a current config")
				}
				return
			}
			if err != nil {
				t.Fatalf("ready() after a reconcile = %v", err)
			}
			cfg := dp.Current()
			if cfg == nil {
				t.Fatal("no config set")
			}
			overlay, _ := d.ipam.OverlayIP()
			if cfg.BridgeAddr != netip.PrefixFrom(overlay, 32) || len(cfg.LocalRanges) != 1 || cfg.LocalRanges[0] != d.cfg.IPAllocRange || cfg.MTU != 1420 {
				t.Errorf("config bridge %v ranges %v mtu %d, want %v/32, the whole range, 1420", cfg.BridgeAddr, cfg.LocalRanges, cfg.MTU, overlay)
			}
			if len(cfg.Peers) != tt.wantPeers {
				t.Fatalf("%d WireGuard peers, want %d: %+v", len(cfg.Peers), tt.wantPeers, cfg.Peers)
			}
			if tt.wantPeers == 1 {
				p := cfg.Peers[0]
				if p.PublicKey.String() != pubB || p.Endpoint != netip.MustParseAddrPort("192.0.2.2:6784") {
					t.Errorf("peer %v at %v, want %s at 192.0.2.2:6784", p.PublicKey, p.Endpoint, pubB)
				}
			}
			// An unchanged input costs no second Set.
			n := dp.SetCount()
			d.reconcileOnce(context.Background(), tt.members)
			if dp.SetCount() != n {
				t.Errorf("an unchanged reconcile called Set again")
			}
		})
	}
}

// TestReadyWaitsForPolicy: with --kube, the node is not ready (and the CNI
// plugin not installed) until the NetworkPolicy controller, fed by a fake
// API, has built its table, even though the data plane is configured.
func TestReadyWaitsForPolicy(t *testing.T) {
	d, _ := testDaemon(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}}
	c := policy.New(kubetest.Client(fake.NewClientset(ns)), "n1", d.log, nopNFT{})
	d.policy = c
	d.reconcileOnce(context.Background(), []mesh.Member{{Name: "n1", Self: true, State: api.MemberAlive}})
	if err := d.ready(); err == nil || !strings.Contains(err.Error(), "NetworkPolicy rules not built") {
		t.Fatalf("ready() before the policy controller synced = %v, want it to wait for policy", err)
	}
	servePolicy(t, c)
	if err := d.ready(); err != nil {
		t.Fatalf("ready() once synced = %v", err)
	}
}

// TestMarkIPAM: the allocator's errors get the kind that tells mesh-cni
// to try again later (503) or that the range is full (507).
func TestMarkIPAM(t *testing.T) {
	tests := []struct {
		name string
		err  error
		kind error // nil = none (500)
	}{
		{"not ready", fmt.Errorf("allocate: %w", ipam.ErrNotReady), control.ErrUnavailable},
		{"closed", ipam.ErrClosed, control.ErrUnavailable},
		{"waited too long", context.DeadlineExceeded, control.ErrUnavailable},
		{"no space", fmt.Errorf("allocate: %w", ipam.ErrNoSpace), control.ErrNoSpace},
		{"other", errors.New("disk full"), nil},
	}
	kinds := []error{control.ErrInvalid, control.ErrNotFound, control.ErrConflict, control.ErrUnavailable, control.ErrNoSpace}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := markIPAM(tt.err)
			if got.Error() != tt.err.Error() {
				t.Errorf("text changed: %q", got)
			}
			for _, k := range kinds {
				if errors.Is(got, k) != (k == tt.kind) {
					t.Errorf("errors.Is(%v) = %v", k, errors.Is(got, k))
				}
			}
		})
	}
}

// TestControlIPAM: the daemon's IPAM behind the control API, through the
// control package's routes: an ADD gets an address of the range with the
// node's gateway, the same one again, and is listed until released.
func TestControlIPAM(t *testing.T) {
	d, _ := testDaemon(t)
	m, err := attach.NewManager(filepath.Join(d.cfg.StateDir, "attachments.json"), attach.CNI{}, d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.attach = m
	h := control.Handler(d.backend())
	do := func(method, path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		return rec
	}
	var first api.Allocation
	for i := range 2 {
		rec := do("POST", "/v1/ipam/allocate", `{"containerID":"c1","ifName":"eth0","network":"mesh"}`)
		var a api.Allocation
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &a) != nil {
			t.Fatalf("allocate #%d: %d %s", i+1, rec.Code, rec.Body)
		}
		gw, _ := d.ipam.OverlayIP()
		p, err := netip.ParsePrefix(a.Address)
		if err != nil || !d.cfg.IPAllocRange.Contains(p.Addr()) || a.Gateway != gw.String() || p.Addr() == gw || a.MTU != 1420 || a.MAC == "" {
			t.Fatalf("allocation %+v: want an address of %v other than the gateway %v, MTU 1420, a MAC", a, d.cfg.IPAllocRange, gw)
		}
		if i == 1 && a != first {
			t.Errorf("the same ADD again got %+v, want %+v", a, first)
		}
		first = a
	}
	if rec := do("GET", "/v1/ipam/allocations", ""); !strings.Contains(rec.Body.String(), first.Address) {
		t.Errorf("allocations %s do not list %s", rec.Body, first.Address)
	}
	if rec := do("POST", "/v1/ipam/gc", `{"network":"mesh","valid":[{"containerID":"c1","ifName":"eth0"}]}`); !strings.Contains(rec.Body.String(), `"released": 0`) {
		t.Errorf("gc of a listed container: %d %s", rec.Code, rec.Body)
	}
	if rec := do("POST", "/v1/ipam/release", `{"containerID":"c1","ifName":"eth0"}`); rec.Code != 204 {
		t.Errorf("release: %d %s", rec.Code, rec.Body)
	}
	if rec := do("GET", "/v1/ipam/allocations", ""); strings.TrimSpace(rec.Body.String()) != "[]" {
		t.Errorf("allocations after the release: %s", rec.Body)
	}
}
