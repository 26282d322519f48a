package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshnet/mesh/cni"
	"github.com/meshnet/mesh/cni/cnitest"
	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

func TestAddCheckDel(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pod := netnstest.New(t)
	args := e.args("c1", pod, "eth0")

	res, err := e.p.Add(ctx, args)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	allocs := e.d.Allocations()
	if len(allocs) != 1 {
		t.Fatalf("daemon allocations = %+v, want one", allocs)
	}
	addr := netip.MustParsePrefix(allocs[0].Address)
	gw := e.d.Gateway

	// The result.
	hostName := cni.HostVethName("c1", "eth0")
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostName || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != pod {
		t.Errorf("result interfaces = %v, want %s then eth0 in %s", res.Interfaces, hostName, pod)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != addr.String() || !res.IPs[0].Gateway.Equal(net.IP(gw.AsSlice())) ||
		res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 {
		t.Errorf("result ips = %v, want %s gw %s on interface 1", res.IPs, addr, gw)
	}
	if len(res.Routes) != 2 {
		t.Errorf("result routes = %v, want the gateway and the default route", res.Routes)
	}

	// The pod's side.
	ph := netnstest.Handle(t, pod)
	link, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the pod: %v", err)
	}
	if link.Attrs().MTU != cnitest.DefaultMTU {
		t.Errorf("pod MTU = %d, want %d", link.Attrs().MTU, cnitest.DefaultMTU)
	}
	if link.Attrs().HardwareAddr.String() != res.Interfaces[1].Mac {
		t.Errorf("pod MAC = %s, result says %s", link.Attrs().HardwareAddr, res.Interfaces[1].Mac)
	}
	addrs, _ := ph.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != addr.String() {
		t.Errorf("pod addresses = %v, want %s", addrs, addr)
	}
	routes, _ := ph.RouteList(link, netlink.FAMILY_V4)
	var sawLink, sawDefault bool
	for _, r := range routes {
		switch {
		case r.Dst != nil && r.Dst.String() == gw.String()+"/32" && r.Scope == netlink.SCOPE_LINK:
			sawLink = true
		case (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(net.IP(gw.AsSlice())):
			sawDefault = true
		}
	}
	if !sawLink || !sawDefault {
		t.Errorf("pod routes = %v, want %s scope link and default via %s", routes, gw, gw)
	}

	// The host's side.
	hl := e.host.Link(hostName)
	br := e.host.Link(e.host.Bridge)
	if hl == nil || hl.Attrs().MasterIndex != br.Attrs().Index || hl.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("host veth %q = %+v, want up on bridge %q", hostName, hl, e.host.Bridge)
	}

	dialFromPod(t, e.host.NS, pod, gw.String())

	if err := e.p.Check(ctx, args); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	if err := ph.AddrDel(link, &addrs[0]); err != nil {
		t.Fatalf("failed to remove the pod's address: %v", err)
	}
	wantCNIError(t, e.p.Check(ctx, args), cni.ErrCheckFailed, "address "+addr.String()+" missing", "route")

	for i := range 2 {
		if err := e.p.Del(ctx, args); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if _, err := ph.LinkByName("eth0"); err == nil {
		t.Error("eth0 still in the pod after DEL")
	}
	e.assertClean(t)
}

func TestParallelAddAndGC(t *testing.T) {
	e := newEnv(t)
	const n = 30
	pods := make([]string, n)
	for i := range pods {
		pods[i] = netnstest.New(t)
	}
	addrs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			res, err := e.p.Add(context.Background(), e.args(fmt.Sprintf("pod%02d", i), pods[i], "eth0"))
			if err != nil {
				errs[i] = err
				return
			}
			addrs[i] = res.IPs[0].Address.String()
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("ADD of pod%02d: %v", i, errs[i])
			continue
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Errorf("pod%02d and pod%02d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	if got := len(e.d.Allocations()); got != n {
		t.Errorf("daemon holds %d allocations, want %d", got, n)
	}

	// GC keeping one attachment, then none.
	gc := func(valid []types.GCAttachment) {
		t.Helper()
		conf := map[string]any{"cniVersion": "1.1.0", "name": "mesh", "type": "mesh-cni", "socket": e.d.Socket, "cni.dev/valid-attachments": valid}
		data, _ := json.Marshal(conf)
		if err := e.p.GC(context.Background(), &skel.CmdArgs{StdinData: data}); err != nil {
			t.Fatalf("GC: %v", err)
		}
	}
	gc([]types.GCAttachment{{ContainerID: "pod07", IfName: "eth0"}})
	if a := e.d.Allocations(); len(a) != 1 || a[0].ContainerID != "pod07" {
		t.Errorf("after GC keeping pod07, allocations = %+v", a)
	}
	gc([]types.GCAttachment{})
	if a := e.d.Allocations(); len(a) != 0 {
		t.Errorf("after GC with no valid attachment, allocations = %+v", a)
	}
}

func TestAddFailures(t *testing.T) {
	tests := []struct {
		name    string
		stdin   func(e *env) []byte
		netns   func(t *testing.T) string
		ifName  string
		prepare func(t *testing.T, e *env, pod string)
		code    uint
		msgs    []string
	}{
		{
			name:  "malformed JSON",
			stdin: func(*env) []byte { return []byte(`{"cniVersion":"1.1.0","name":`) },
			code:  types.ErrDecodingFailure,
			msgs:  []string{"failed to decode network config"},
		},
		{
			name: "known field of the wrong type",
			stdin: func(*env) []byte {
				return []byte(`{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","socket":true}`)
			},
			code: types.ErrInvalidNetworkConfig,
			msgs: []string{`"socket"`, "string"},
		},
		{
			name:  "missing netns",
			netns: func(t *testing.T) string { return t.TempDir() + "/gone" },
			code:  types.ErrInvalidEnvironmentVariables,
			msgs:  []string{"failed to open netns", "/gone"},
		},
		{
			name:  "netns that is not one",
			netns: func(t *testing.T) string { return t.TempDir() },
			code:  types.ErrInvalidEnvironmentVariables,
			msgs:  []string{"not a network namespace"},
		},
		{
			name:   "interface name too long",
			ifName: "eth0123456789abcdef",
			code:   types.ErrInvalidEnvironmentVariables,
			msgs:   []string{"eth0123456789abcdef", "too long"},
		},
		{
			name:    "daemon down",
			prepare: func(_ *testing.T, e *env, _ string) { e.d.Stop() },
			code:    types.ErrTryAgainLater,
			msgs:    []string{"cannot reach the mesh daemon at", "is `mesh launch` running?"},
		},
		{
			name:    "bridge missing",
			prepare: func(_ *testing.T, e *env, _ string) { e.d.SetBridge("nobridge") },
			code:    types.ErrTryAgainLater,
			msgs:    []string{`bridge "nobridge" not found`},
		},
		{
			name: "interface already in the pod",
			prepare: func(t *testing.T, _ *env, pod string) {
				h := netnstest.Handle(t, pod)
				if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
					t.Fatal(err)
				}
			},
			code: types.ErrInternal,
			msgs: []string{`interface "eth0" already exists`},
		},
		{
			// Fails on the last step of the pod's side, after the veth
			// exists: the rollback must remove it and the allocation.
			name: "pod already has a default route",
			prepare: func(t *testing.T, _ *env, pod string) {
				h := netnstest.Handle(t, pod)
				d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
				if err := h.LinkAdd(d); err != nil {
					t.Fatal(err)
				}
				if err := h.LinkSetUp(d); err != nil {
					t.Fatal(err)
				}
				if err := h.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
					t.Fatal(err)
				}
			},
			code: types.ErrInternal,
			msgs: []string{"failed to add route"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			pod := netnstest.New(t)
			args := e.args("c1", pod, "eth0")
			if tt.stdin != nil {
				args.StdinData = tt.stdin(e)
			}
			if tt.netns != nil {
				args.Netns = tt.netns(t)
			}
			if tt.ifName != "" {
				args.IfName = tt.ifName
			}
			if tt.prepare != nil {
				tt.prepare(t, e, pod)
			}
			_, err := e.p.Add(context.Background(), args)
			wantCNIError(t, err, tt.code, tt.msgs...)
			e.assertClean(t)
			if _, err := netnstest.Handle(t, pod).LinkByName(cni.HostVethName("c1", "eth0")); err == nil {
				t.Error("host veth left in the pod netns")
			}
			if l, err := netnstest.Handle(t, pod).LinkByName("eth0"); err == nil && l.Type() == "veth" {
				t.Error("veth eth0 left in the pod netns")
			}
		})
	}
}

func TestDel(t *testing.T) {
	tests := []struct {
		name  string
		netns func(t *testing.T, pod string) string
		add   bool
		stop  bool
		code  uint
	}{
		{name: "after ADD", add: true},
		{name: "unknown container"},
		{name: "missing netns", netns: func(t *testing.T, _ string) string { return t.TempDir() + "/gone" }},
		{name: "no netns", netns: func(*testing.T, string) string { return "" }},
		{name: "no netns after ADD", add: true, netns: func(*testing.T, string) string { return "" }},
		{name: "daemon down after ADD", add: true, stop: true, code: types.ErrTryAgainLater},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			pod := netnstest.New(t)
			args := e.args("c1", pod, "eth0")
			if tt.add {
				if _, err := e.p.Add(context.Background(), args); err != nil {
					t.Fatalf("ADD: %v", err)
				}
			}
			if tt.netns != nil {
				args.Netns = tt.netns(t, pod)
			}
			if tt.stop {
				e.d.Stop()
			}
			err := e.p.Del(context.Background(), args)
			if tt.code != 0 {
				wantCNIError(t, err, tt.code, "cannot reach the mesh daemon", "DEL must be retried")
			} else if err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if e.host.Link(cni.HostVethName("c1", "eth0")) != nil {
				t.Error("host veth left after DEL")
			}
			if _, err := netnstest.Handle(t, pod).LinkByName("eth0"); err == nil {
				t.Error("eth0 left in the pod after DEL")
			}
			if !tt.stop && len(e.d.Allocations()) != 0 {
				t.Errorf("allocations after DEL = %+v", e.d.Allocations())
			}
		})
	}
}

func TestCheckFailures(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(t *testing.T, e *env, pod string)
		code    uint
		msgs    []string
	}{
		{name: "released", breakIt: func(t *testing.T, e *env, _ string) {
			gcAll(t, e)
		}, code: types.ErrUnknownContainer, msgs: []string{`no address for container "c1"`}},
		{name: "MTU", breakIt: func(t *testing.T, _ *env, pod string) {
			h := netnstest.Handle(t, pod)
			l, _ := h.LinkByName("eth0")
			if err := h.LinkSetMTU(l, 1300); err != nil {
				t.Fatal(err)
			}
		}, code: cni.ErrCheckFailed, msgs: []string{"MTU 1300, want 1420"}},
		{name: "interface gone", breakIt: func(t *testing.T, _ *env, pod string) {
			h := netnstest.Handle(t, pod)
			l, _ := h.LinkByName("eth0")
			if err := h.LinkDel(l); err != nil {
				t.Fatal(err)
			}
		}, code: cni.ErrCheckFailed, msgs: []string{`interface "eth0" not found`, "host veth"}},
		{name: "daemon down", breakIt: func(_ *testing.T, e *env, _ string) { e.d.Stop() },
			code: types.ErrTryAgainLater, msgs: []string{"cannot reach the mesh daemon"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			pod := netnstest.New(t)
			args := e.args("c1", pod, "eth0")
			if _, err := e.p.Add(context.Background(), args); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			tt.breakIt(t, e, pod)
			wantCNIError(t, e.p.Check(context.Background(), args), tt.code, tt.msgs...)
		})
	}
}

func gcAll(t *testing.T, e *env) {
	t.Helper()
	if err := e.p.GC(context.Background(), &skel.CmdArgs{StdinData: e.conf("1.1.0")}); err != nil {
		t.Fatalf("GC: %v", err)
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(e *env)
		code    uint
		msg     string
	}{
		{name: "ready", prepare: func(*env) {}},
		{name: "waiting", prepare: func(e *env) { e.d.SetIPAMStatus("waiting") }, code: types.ErrPluginNotAvailable, msg: `IPAM is "waiting"`},
		{name: "no IPAM", prepare: func(e *env) { e.d.SetIPAMStatus("") }, code: types.ErrPluginNotAvailable, msg: "has no IPAM"},
		{name: "daemon down", prepare: func(e *env) { e.d.Stop() }, code: types.ErrPluginNotAvailable, msg: "is `mesh launch` running?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// STATUS touches no namespace, but newEnv is the one setup.
			e := newEnv(t)
			tt.prepare(e)
			err := e.p.Status(context.Background(), &skel.CmdArgs{StdinData: e.conf("1.1.0")})
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("STATUS: %v", err)
				}
				return
			}
			wantCNIError(t, err, tt.code, tt.msg)
		})
	}
}

// TestResultVersions runs ADD through skel's functions for every supported
// version and checks the printed result parses as that version.
func TestResultVersions(t *testing.T) {
	for _, v := range cni.PluginInfo.SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			e := newEnv(t)
			var out bytes.Buffer
			e.p.Stdout = &out
			pod := netnstest.New(t)
			args := e.args("c1", pod, "eth0")
			args.StdinData = e.conf(v)
			if err := e.p.Funcs().Add(args); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			res, err := version.NewResult(v, out.Bytes())
			if err != nil {
				t.Fatalf("result %s does not parse as %s: %v", out.Bytes(), v, err)
			}
			if res.Version() != v {
				t.Errorf("result version = %s, want %s", res.Version(), v)
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatalf("converting the result: %v", err)
			}
			if len(cur.IPs) != 1 || cur.IPs[0].Address.String() != e.d.Allocations()[0].Address {
				t.Errorf("result ips = %v, want %s", cur.IPs, e.d.Allocations()[0].Address)
			}
			if err := e.p.Funcs().Del(args); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			e.assertClean(t)
		})
	}
}

// TestCheckPrevResult: CHECK compares the runtime's record of ADD, the
// prevResult, with the daemon's allocation.
func TestCheckPrevResult(t *testing.T) {
	e := newEnv(t)
	pod := netnstest.New(t)
	args := e.args("c1", pod, "eth0")
	res, err := e.p.Add(context.Background(), args)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	withPrev := func(r *current.Result) []byte {
		var conf map[string]any
		json.Unmarshal(e.conf("1.1.0"), &conf)
		data, _ := json.Marshal(r)
		var prev map[string]any
		json.Unmarshal(data, &prev)
		conf["prevResult"] = prev
		out, _ := json.Marshal(conf)
		return out
	}
	args.StdinData = withPrev(res)
	if err := e.p.Check(context.Background(), args); err != nil {
		t.Fatalf("CHECK with the ADD's prevResult: %v", err)
	}
	other := *res
	ip := *res.IPs[0]
	ip.Address.IP = net.ParseIP("10.32.0.200").To4()
	other.IPs = []*current.IPConfig{&ip}
	args.StdinData = withPrev(&other)
	wantCNIError(t, e.p.Check(context.Background(), args), cni.ErrCheckFailed, "prevResult does not hold the address")
}

const (
	clusterRange6 = "fd32::/48"
	ownedRange6   = "fd32::/120"
)

// newDualEnv is newEnv with a dual-stack daemon.
func newDualEnv(t *testing.T, owned6 string) *env {
	t.Helper()
	testnet.RequireRoot(t)
	d := cnitest.NewFakeDaemon(t, clusterRange, ownedRange)
	d.EnableIPv6(clusterRange6, owned6)
	host := cnitest.NewHost(t, d)
	return &env{d: d, host: host, p: &cni.Plugin{HostNS: host.NS, Timeout: 10 * time.Second}}
}

// TestAddCheckDelDualStack: with a dual-stack daemon one ADD wires both
// addresses, each with its gateway and routes, the IPv6 one usable at once
// (no duplicate address detection); a repeated ADD returns both; CHECK
// wants both; DEL leaves nothing.
func TestAddCheckDelDualStack(t *testing.T) {
	e := newDualEnv(t, ownedRange6)
	ctx := context.Background()
	pod := netnstest.New(t)
	args := e.args("c1", pod, "eth0")

	res, err := e.p.Add(ctx, args)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	allocs := e.d.Allocations()
	if len(allocs) != 1 || allocs[0].Address6 == "" {
		t.Fatalf("daemon allocations = %+v, want one with an IPv6 address", allocs)
	}
	addr := netip.MustParsePrefix(allocs[0].Address)
	addr6 := netip.MustParsePrefix(allocs[0].Address6)
	gw, gw6 := e.d.Gateway, e.d.Gateway6
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != addr.String() || !res.IPs[0].Gateway.Equal(net.IP(gw.AsSlice())) ||
		res.IPs[1].Address.String() != addr6.String() || !res.IPs[1].Gateway.Equal(net.IP(gw6.AsSlice())) ||
		res.IPs[1].Interface == nil || *res.IPs[1].Interface != 1 {
		t.Errorf("result ips = %v, want %s gw %s and %s gw %s on interface 1", res.IPs, addr, gw, addr6, gw6)
	}
	if len(res.Routes) != 4 {
		t.Errorf("result routes = %v, want the gateway and the default route of each family", res.Routes)
	}

	ph := netnstest.Handle(t, pod)
	link, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the pod: %v", err)
	}
	addrs6, _ := ph.AddrList(link, netlink.FAMILY_V6)
	var got6 *netlink.Addr
	for i := range addrs6 {
		if addrs6[i].IPNet.String() == addr6.String() {
			got6 = &addrs6[i]
		}
	}
	if got6 == nil {
		t.Fatalf("pod IPv6 addresses = %v, want %s", addrs6, addr6)
	}
	if got6.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 || got6.Flags&unix.IFA_F_NODAD == 0 {
		t.Errorf("pod address %s has flags %#x, want nodad and never tentative", addr6, got6.Flags)
	}
	routes6, _ := ph.RouteList(link, netlink.FAMILY_V6)
	var sawDefault6 bool
	for _, r := range routes6 {
		if (r.Dst == nil || r.Dst.String() == "::/0") && r.Gw.Equal(net.IP(gw6.AsSlice())) {
			sawDefault6 = true
		}
	}
	if !sawDefault6 {
		t.Errorf("pod IPv6 routes = %v, want default via %s", routes6, gw6)
	}
	// Right after ADD, over both families.
	dialFromPod(t, e.host.NS, pod, gw6.String())
	dialFromPod(t, e.host.NS, pod, gw.String())

	again, err := e.p.Add(ctx, args)
	if err != nil || len(again.IPs) != 2 || again.IPs[1].Address.String() != addr6.String() {
		t.Errorf("repeated ADD = %v, %v; want both addresses again", again, err)
	}
	if err := e.p.Check(ctx, args); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	if err := ph.AddrDel(link, got6); err != nil {
		t.Fatalf("failed to remove the pod's IPv6 address: %v", err)
	}
	wantCNIError(t, e.p.Check(ctx, args), cni.ErrCheckFailed, "address "+addr6.String()+" missing")

	for i := range 2 {
		if err := e.p.Del(ctx, args); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	e.assertClean(t)
}

// TestAddDualStackNoIPv6Space: when the daemon has no IPv6 address to give,
// the ADD fails and leaves neither an interface nor an address behind.
func TestAddDualStackNoIPv6Space(t *testing.T) {
	e := newDualEnv(t, "fd32::/127") // the gateway only
	pod := netnstest.New(t)
	_, err := e.p.Add(context.Background(), e.args("c1", pod, "eth0"))
	if err == nil {
		t.Fatal("ADD without IPv6 space succeeded")
	}
	if !strings.Contains(err.Error(), "full") {
		t.Errorf("ADD error %q does not say the range is full", err)
	}
	e.assertClean(t)
}
