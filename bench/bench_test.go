//go:build bench

package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// Tunables, from the environment so that `make bench` can be shortened or
// lengthened without editing code.
var (
	cniPods     = envInt("BENCH_CNI_PODS", 100)
	ipamOps     = envInt("BENCH_IPAM_OPS", 1000)
	iperfSecs   = envInt("BENCH_IPERF_SECONDS", 5)
	iperfRounds = envInt("BENCH_IPERF_ROUNDS", 3)
	// BENCH_PARTS selects parts (cni, churn, state, dataplane, kdf,
	// isolation, restart, hostile, relay, scale, dualstack; default all).
	parts = os.Getenv("BENCH_PARTS")
	// BENCH_MESH_ENV and BENCH_WG_ENV add KEY=VALUE words to the
	// environment of the mesh daemons and of the bare wireguard-go, for
	// experiments (e.g. GOMEMLIMIT=64MiB or GODEBUG=gctrace=1).
	meshEnv = strings.Fields(os.Getenv("BENCH_MESH_ENV"))
	wgEnv   = strings.Fields(os.Getenv("BENCH_WG_ENV"))
	// BENCH_MESH_ARGS adds flags to `mesh launch`.
	meshArgs = strings.Fields(os.Getenv("BENCH_MESH_ARGS"))
)

func want(part string) bool {
	return parts == "" || slices.Contains(strings.Split(parts, ","), part)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestBench runs every part, then prints one table. A part that fails is
// reported as not measured (and fails the test) without stopping the others.
func TestBench(t *testing.T) {
	testnet.RequireRoot(t)
	r := &report{start: time.Now(), loadStart: loadavg()}
	if want("cni") {
		t.Run("CNI", func(t *testing.T) { benchCNIAndIPAM(t, r) })
	}
	if want("churn") {
		t.Run("Churn", func(t *testing.T) { benchChurn(t, r) })
	}
	if want("state") {
		t.Run("StateSize", func(t *testing.T) { benchStateSize(t, r) })
		t.Run("Journal", func(t *testing.T) { benchJournal(t, r) })
		t.Run("MergeAtRest", func(t *testing.T) { benchMergeAtRest(t, r) })
	}
	if want("dataplane") {
		t.Run("Dataplane", func(t *testing.T) { benchDataplane(t, r) })
	}
	if want("kdf") {
		t.Run("KDF", func(t *testing.T) { benchKDF(t, r) })
	}
	if want("isolation") {
		t.Run("Isolation", func(t *testing.T) { benchIsolation(t, r) })
	}
	if want("restart") {
		t.Run("Restart", func(t *testing.T) { benchRestart(t, r) })
	}
	if want("hostile") {
		t.Run("Hostile", func(t *testing.T) { benchHostile(t, r) })
	}
	if want("relay") {
		t.Run("Relay", func(t *testing.T) { benchRelay(t, r) })
	}
	if want("scale") {
		t.Run("Scale", func(t *testing.T) { benchScale(t, r) })
	}
	if want("dualstack") {
		t.Run("DualStack", func(t *testing.T) { benchDualStack(t, r) })
	}
	r.print(os.Stdout)
	if out := os.Getenv("BENCH_OUT"); out != "" {
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		r.print(f)
		f.Close()
	}
}

// dualStackArgs launch a dual-stack node (docs/ipam.md, "Dual-stack"): the
// data plane and CNI parts measure IPv6 beside IPv4 with them.
var dualStackArgs = []string{"--ipalloc-range", "10.32.0.0/12", "--ipalloc-range", "fd32::/48"}

// ---------------------------------------------------------------- CNI + IPAM

const refConflist = `{
  "cniVersion": "1.1.0",
  "name": "%s",
  "plugins": [
    {"type": "bridge", "bridge": "%s", "isGateway": true, "mtu": %d,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "%s"}]], "dataDir": "/run/cni-bench/ipam"}}%s
  ]
}
`

func benchCNIAndIPAM(t *testing.T, r *report) {
	tn := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "bcni"})
	h := tn.Hosts()[0]
	n := launch(t, h, nil)
	if err := waitReady([]*node{n}, 60*time.Second); err != nil {
		t.Fatalf("single-host mesh: %v\n%s", err, n.Proc.Log())
	}
	meshtest.WaitCNIInstalled(t, n.Node)
	st, err := n.Status()
	if err != nil {
		t.Fatal(err)
	}
	mtu := st.MTU
	if mtu == 0 {
		mtu = 1420
	}

	// The reference plugins next to mesh-cni, and their configurations:
	// bridge + host-local, and the same plus loopback (mesh-cni sets lo up
	// itself, bridge does not).
	for _, pkg := range []string{
		"github.com/containernetworking/plugins/plugins/main/bridge",
		"github.com/containernetworking/plugins/plugins/ipam/host-local",
		"github.com/containernetworking/plugins/plugins/main/loopback",
	} {
		bin := testnet.BuildBinary(t, pkg)
		if err := h.CopyFile(bin, "/opt/cni/bin/"+filepath.Base(bin), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	confDir := h.Path("/etc/cni/bench")
	lo := `,
    {"type": "loopback"}`
	confs := map[string]string{
		"ref":   fmt.Sprintf(refConflist, "ref", "refbr0", mtu, "10.250.0.0/16", ""),
		"refLo": fmt.Sprintf(refConflist, "reflo", "refbr1", mtu, "10.251.0.0/16", lo),
	}
	for name, c := range confs {
		if err := os.MkdirAll(confDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(confDir, name+".conflist"), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	tool := testnet.BuildBinary(t, "./bench/cnibench")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if res, err := runCNIBench(ctx, h, tool, cniPods, 5, "mesh="+meshtest.CNIConfPath, "ref=/etc/cni/bench/ref.conflist", "refLo=/etc/cni/bench/refLo.conflist"); err != nil {
		t.Error(err)
	} else {
		r.cni = res
		if st, err := n.Status(); err == nil && st.IPAM != nil && st.IPAM.Allocated != 0 {
			t.Errorf("%d allocations left after the CNI DELs", st.IPAM.Allocated)
		}
	}

	// IPAM through the control socket, as mesh-cni does it (one client,
	// so one keep-alive connection: the cost of a fresh connection is in
	// the CNI numbers above).
	var alloc, rel, both []time.Duration
	for i := range ipamOps + 20 {
		id := fmt.Sprintf("ipambench-%d", i)
		s := time.Now()
		if _, err := n.api.Allocate(ctx, id, "eth0"); err != nil {
			t.Fatalf("Allocate #%d: %v", i, err)
		}
		m := time.Now()
		if err := n.api.Release(ctx, id, "eth0"); err != nil {
			t.Fatalf("Release #%d: %v", i, err)
		}
		e := time.Now()
		if i >= 20 {
			alloc, rel, both = append(alloc, m.Sub(s)), append(rel, e.Sub(m)), append(both, e.Sub(s))
		}
	}
	r.ipam = &ipamLatency{alloc, rel, both}
	benchCNIDualStack(t, r, h, tool)
}

// runCNIBench runs bench/cnibench (tool) on h for pods pods (after warmup
// not counted) of each network name=conflist, interleaved, and returns
// the latencies per network.
func runCNIBench(ctx context.Context, h *testnet.Host, tool string, pods, warmup int, nets ...string) (map[string]cniLatency, error) {
	args := append([]string{"-pods", strconv.Itoa(pods), "-warmup", strconv.Itoa(warmup), "-path", "/opt/cni/bin",
		"-cache", "/run/cni-bench/cache"}, nets...)
	out, err := h.Run(ctx, tool, args...)
	if err != nil {
		return nil, fmt.Errorf("cnibench %v on %s: %w\n%s", nets, h.Name, err, out)
	}
	var res struct {
		Add map[string][]int64 `json:"add"`
		Del map[string][]int64 `json:"del"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return nil, fmt.Errorf("cnibench output %q: %w", out, err)
	}
	lat := map[string]cniLatency{}
	for name, adds := range res.Add {
		dels := res.Del[name]
		var l cniLatency
		for i := range min(len(adds), len(dels)) {
			l.add = append(l.add, time.Duration(adds[i]))
			l.del = append(l.del, time.Duration(dels[i]))
			l.both = append(l.both, time.Duration(adds[i]+dels[i]))
		}
		if len(l.both) == 0 {
			return nil, fmt.Errorf("cnibench measured nothing of %s: %q", name, out)
		}
		lat[name] = l
	}
	return lat, nil
}

// dualCNIChunks is how many turns each of the two hosts of the dual-stack
// CNI comparison takes.
const dualCNIChunks = 4

// benchCNIDualStack runs the same CNI ADD+DEL against a dual-stack daemon
// (an address of each family per pod) on a host of its own, side by side
// with mesh-cni on v4Host (the IPv4-only daemon of the part): the two
// hosts take turns, cniPods/dualCNIChunks pods at a time, so that both
// see the same machine load.
func benchCNIDualStack(t *testing.T, r *report, v4Host *testnet.Host, tool string) {
	tn := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "bcn6"})
	h := tn.Hosts()[0]
	n := launch(t, h, nil, dualStackArgs...)
	if err := waitReady([]*node{n}, 60*time.Second); err != nil {
		t.Errorf("dual-stack CNI not measured: %v\n%s", err, n.Proc.Log())
		return
	}
	meshtest.WaitCNIInstalled(t, n.Node)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var v4, dual cniLatency
	for range dualCNIChunks {
		for _, run := range []struct {
			h    *testnet.Host
			name string
			into *cniLatency
		}{{v4Host, "meshV4", &v4}, {h, "meshDual", &dual}} {
			res, err := runCNIBench(ctx, run.h, tool, max(cniPods/dualCNIChunks, 1), 2, run.name+"="+meshtest.CNIConfPath)
			if err != nil {
				t.Errorf("dual-stack CNI comparison: %v", err)
				return
			}
			l := res[run.name]
			run.into.add, run.into.del, run.into.both = append(run.into.add, l.add...), append(run.into.del, l.del...), append(run.into.both, l.both...)
		}
	}
	if r.cni == nil {
		r.cni = map[string]cniLatency{}
	}
	r.cni["meshV4"], r.cni["meshDual"] = v4, dual
	if st, err := n.Status(); err == nil && (st.IPAM == nil || st.IPAM.Allocated != 0 || st.IPAM6 == nil || st.IPAM6.Allocated != 0) {
		t.Errorf("allocations left after the dual-stack CNI DELs: %+v %+v", st.IPAM, st.IPAM6)
	}
}

// ---------------------------------------------------------------- state size

var stateSizeRE = regexp.MustCompile(`BenchmarkStateSize/(\d+)peers\S*\s.*?\s([\d.]+) bytes\s+([\d.]+) bytes/peer`)

// ipamBenchmark runs one of the ipam package's own benchmarks (what they
// measure is internal to the package) for benchtime and returns its output.
func ipamBenchmark(t *testing.T, name, benchtime string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^$", "-bench", "^"+name+"$", "-benchtime", benchtime, "../ipam/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go test -bench %s ./ipam/: %v\n%s", name, err, out)
	}
	return out
}

// benchStateSize runs the ipam package's own BenchmarkStateSize (the
// encoding it needs is internal to the package) and reads its metrics.
func benchStateSize(t *testing.T, r *report) {
	out := ipamBenchmark(t, "BenchmarkStateSize", "1x")
	for _, m := range stateSizeRE.FindAllStringSubmatch(string(out), -1) {
		peers, _ := strconv.Atoi(m[1])
		b, _ := strconv.ParseFloat(m[2], 64)
		pp, _ := strconv.ParseFloat(m[3], 64)
		r.state = append(r.state, stateSize{peers, b, pp})
	}
	if len(r.state) == 0 {
		t.Fatalf("no BenchmarkStateSize results in:\n%s", out)
	}
}

var journalRE = regexp.MustCompile(`BenchmarkAllocateLargeState/(\d+)peers/(journal|rewrite)\S*\s+\d+\s+([\d.]+) ns/op\s+([\d.]+) file-bytes`)

// journalCost is one size of ipam's BenchmarkAllocateLargeState: an
// Allocate and a Release on disk, with the journal and with the state file
// rewritten for each.
type journalCost struct {
	peers            int
	fileBytes        float64
	journal, rewrite time.Duration
}

// benchJournal runs the ipam package's BenchmarkAllocateLargeState, both
// ways in one run.
func benchJournal(t *testing.T, r *report) {
	out := ipamBenchmark(t, "BenchmarkAllocateLargeState", "300x")
	bySize := map[int]*journalCost{}
	for _, m := range journalRE.FindAllStringSubmatch(string(out), -1) {
		peers, _ := strconv.Atoi(m[1])
		ns, _ := strconv.ParseFloat(m[3], 64)
		fb, _ := strconv.ParseFloat(m[4], 64)
		c := bySize[peers]
		if c == nil {
			c = &journalCost{peers: peers, fileBytes: fb}
			bySize[peers] = c
			r.journal = append(r.journal, c)
		}
		if m[2] == "journal" {
			c.journal = time.Duration(ns)
		} else {
			c.rewrite = time.Duration(ns)
		}
	}
	if len(r.journal) == 0 {
		t.Fatalf("no BenchmarkAllocateLargeState results in:\n%s", out)
	}
}

var mergeAtRestRE = regexp.MustCompile(`BenchmarkMergeAtRest/(heartbeats|unchanged)\S*\s+\d+\s+([\d.]+) ns/op`)

// benchMergeAtRest runs the ipam package's BenchmarkMergeAtRest: one
// push/pull merge of a 1000-peer signed state, with heartbeats (as with
// automatic reclaim on) and at rest without them, side by side.
func benchMergeAtRest(t *testing.T, r *report) {
	out := ipamBenchmark(t, "BenchmarkMergeAtRest", "16x")
	r.mergeAtRest = map[string]time.Duration{}
	for _, m := range mergeAtRestRE.FindAllStringSubmatch(string(out), -1) {
		ns, _ := strconv.ParseFloat(m[2], 64)
		r.mergeAtRest[m[1]] = time.Duration(ns)
	}
	if len(r.mergeAtRest) != 2 {
		t.Fatalf("no BenchmarkMergeAtRest results in:\n%s", out)
	}
}

// ---------------------------------------------------------------- data plane

const (
	bareDev  = "bwg0"
	barePort = 51820
)

// bareAddr is the address of host i (1-based) on the bare wireguard-go
// pair: TEST-NET-2, only ever inside the simulated hosts.
func bareAddr(i int) string { return fmt.Sprintf("198.51.100.%d", i) }

func benchDataplane(t *testing.T, r *report) {
	tn := testnet.New(t, testnet.Options{Hosts: 2, Prefix: "bdp"})
	hosts := tn.Hosts()
	h1, h2 := hosts[0], hosts[1]

	// The mesh, started first so that its idle memory is measured before
	// any load.
	nodes := []*node{launch(t, h1, nil, dualStackArgs...), launch(t, h2, hosts[:1], dualStackArgs...)}
	var overlay, overlay6 string
	if err := waitReady(nodes, 90*time.Second); err != nil {
		r.meshErr = err.Error()
		t.Errorf("mesh overlay not measured: %v", err)
	} else {
		st, _ := nodes[1].Status()
		overlay, overlay6 = st.OverlayIP, st.OverlayIP6
		r.mtu = st.MTU
		time.Sleep(2 * time.Second) // let the start settle
		for _, n := range nodes {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.Proc.PID())); err == nil {
				t.Logf("idle mesh on %s:\n%s", n.Host.Name, grepLines(string(b), "Rss", "VmHWM", "Threads"))
			}
			m, err := meshMemory(n)
			if err != nil {
				t.Fatal(err)
			}
			r.meshIdle = append(r.meshIdle, m)
		}
	}
	if r.mtu == 0 {
		r.mtu = 1500 - 80
	}

	// The bare wireguard-go pair, same module version, same MTU.
	wgBin := testnet.BuildBinary(t, "golang.zx2c4.com/wireguard")
	var wgProcs []*testnet.Proc
	var ks []wgKeyPair
	for _, h := range hosts {
		wgProcs = append(wgProcs, startBareWG(t, h, wgBin))
		ks = append(ks, newWGKeyPair(t))
	}
	for i, h := range hosts {
		o := 1 - i
		if err := configureBareWG(h, wgProcs[i], i+1, ks[i], ks[o].pub, hosts[o], r.mtu); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second)
	for _, p := range wgProcs {
		m, err := readMemory(p.PID())
		if err != nil {
			t.Fatal(err)
		}
		r.wgIdle = append(r.wgIdle, m)
	}

	// iperf3: host1 sends to host2, rounds of veth, mesh, bare wireguard-go.
	h2.Start(t, "iperf3", []string{"-s"}, nil)
	targets := []struct{ name, addr string }{
		{"veth", h2.Addr.String()},
		{"mesh", overlay},
		{"wg", bareAddr(2)},
		{"mesh6", overlay6}, // the same overlay, IPv6 inside WireGuard
	}
	r.tput = map[string][]float64{}
	r.tputErr = map[string]string{}
	// CPU per byte carried: both ends' processes, both ends' tunnels.
	probes := map[string]*cpuProbe{"wg": {hosts: hosts, dev: bareDev}}
	for _, p := range wgProcs {
		probes["wg"].pgids = append(probes["wg"].pgids, p.PID())
	}
	if overlay != "" {
		for _, k := range []string{"mesh", "mesh6"} {
			probes[k] = &cpuProbe{hosts: hosts, dev: fastdp.DefaultDeviceName}
			for _, n := range nodes {
				// The daemon's group, and the data-plane process's,
				// which is a group (and session) of its own.
				probes[k].pgids = append(probes[k].pgids, n.Proc.PID())
				if dp := n.MustStatus().DataplaneProcess; dp != nil && dp.PID != 0 {
					probes[k].pgids = append(probes[k].pgids, dp.PID)
				}
			}
		}
	}
	r.cpu = map[string][]cpuSample{}
	for round := range iperfRounds {
		for _, tg := range targets {
			if tg.addr == "" || r.tputErr[tg.name] != "" {
				continue
			}
			probe := probes[tg.name]
			if probe != nil {
				if err := probe.start(); err != nil {
					t.Errorf("CPU of %s round %d: %v", tg.name, round+1, err)
					probe = nil
				}
			}
			bps, err := iperf(h1, tg.addr, iperfSecs)
			if err != nil {
				r.tputErr[tg.name] = err.Error()
				t.Errorf("iperf3 %s round %d: %v", tg.name, round+1, err)
				continue
			}
			r.tput[tg.name] = append(r.tput[tg.name], bps)
			if probe != nil {
				s, err := probe.stop()
				if err != nil {
					t.Errorf("CPU of %s round %d: %v", tg.name, round+1, err)
					continue
				}
				t.Logf("%s round %d: %v CPU for %d bytes through %s: %.2f s/GB", tg.name, round+1, s.cpu, s.bytes, probe.dev, s.perGB())
				r.cpu[tg.name] = append(r.cpu[tg.name], s)
			}
		}
	}
	if overlay != "" {
		for _, n := range nodes {
			m, err := meshMemory(n)
			if err != nil {
				t.Fatal(err)
			}
			r.meshLoad = append(r.meshLoad, m)
		}
	}
	for _, p := range wgProcs {
		m, err := readMemory(p.PID())
		if err != nil {
			t.Fatal(err)
		}
		r.wgLoad = append(r.wgLoad, m)
	}

	// Then both directions at once, for the memory bound: each side both
	// encrypts and decrypts at full speed.
	for _, tg := range targets[1:] {
		if tg.addr == "" || r.tputErr[tg.name] != "" || tg.name == "mesh6" {
			continue
		}
		bps, err := iperf(h1, tg.addr, iperfSecs, "--bidir")
		if err != nil {
			t.Errorf("iperf3 --bidir %s: %v", tg.name, err)
			continue
		}
		r.bidir = append(r.bidir, bidirResult{tg.name, bps})
	}
	if overlay != "" {
		for _, n := range nodes {
			m, err := meshMemory(n)
			if err != nil {
				t.Fatal(err)
			}
			r.meshBidir = append(r.meshBidir, m)
		}
	}
	for _, p := range wgProcs {
		m, err := readMemory(p.PID())
		if err != nil {
			t.Fatal(err)
		}
		r.wgBidir = append(r.wgBidir, m)
	}
	if dir := os.Getenv("BENCH_LOGS"); dir != "" {
		for _, n := range nodes {
			_ = os.WriteFile(filepath.Join(dir, "mesh-"+n.Host.Name+".log"), []byte(n.Proc.Log()), 0o644)
		}
		for i, p := range wgProcs {
			_ = os.WriteFile(filepath.Join(dir, "wg-"+hosts[i].Name+".log"), []byte(p.Log()), 0o644)
		}
	}
	if t.Failed() {
		for _, n := range nodes {
			t.Logf("--- mesh on %s:\n%s", n.Host.Name, n.Proc.Log())
		}
	}
}

type wgKeyPair struct{ priv, pub string }

func newWGKeyPair(t *testing.T) wgKeyPair {
	priv, pub := wgKeys(t)
	return wgKeyPair{priv, pub}
}

// startBareWG starts a bare wireguard-go in the foreground on h, its
// device bareDev.
func startBareWG(t *testing.T, h *testnet.Host, wgBin string) *testnet.Proc {
	return h.Start(t, wgBin, []string{"-f", bareDev}, append([]string{"LOG_LEVEL=error"}, wgEnv...))
}

// configureBareWG configures the bare wireguard-go p on h, host number i
// (1-based) of its pair, by hand as an operator would with `wg set` and
// `ip`: its key and port, the other host's key, endpoint and address
// (peerPub, peer), then the device's address, MTU and link up.
func configureBareWG(h *testnet.Host, p *testnet.Proc, i int, own wgKeyPair, peerPub string, peer *testnet.Host, mtu int) error {
	o := 3 - i
	conf := fmt.Sprintf("set=1\nprivate_key=%s\nlisten_port=%d\nreplace_peers=true\npublic_key=%s\nendpoint=%s:%d\nreplace_allowed_ips=true\nallowed_ip=%s/32\n\n",
		own.priv, barePort, peerPub, peer.Addr, barePort, bareAddr(o))
	if err := uapiSet(h.Path("/run/wireguard/"+bareDev+".sock"), conf, p); err != nil {
		return fmt.Errorf("configuring wireguard-go on %s: %w", h.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"addr", "add", bareAddr(i) + "/24", "dev", bareDev},
		{"link", "set", bareDev, "mtu", strconv.Itoa(mtu), "up"},
	} {
		if out, err := h.Run(ctx, "ip", args...); err != nil {
			return fmt.Errorf("ip %v on %s: %w\n%s", args, h.Name, err, out)
		}
	}
	return nil
}

// uapiSet sends one UAPI set operation to wireguard-go's socket (what `wg
// set` does) once the socket exists, and checks the answer.
func uapiSet(sock, conf string, p *testnet.Proc) error {
	var c net.Conn
	var err error
	// Polled every 10 ms: part 7 times wireguard-go's start to its
	// first packet, which this wait must not round up.
	for range 1000 {
		if p.Exited() {
			return fmt.Errorf("wireguard-go exited:\n%s", p.Log())
		}
		if c, err = net.DialTimeout("unix", sock, time.Second); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, conf); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "errno=0" {
		return fmt.Errorf("UAPI answered %q", line)
	}
	return nil
}

// iperf runs one single-stream TCP iperf3 test from h to addr (the first
// second omitted) and returns the received bits per second.
// With --bidir it returns the sum of both directions.
func iperf(h *testnet.Host, addr string, secs int, extra ...string) (float64, error) {
	return iperfIn(h, "", addr, secs, extra...)
}

// iperfIn is iperf run in the network namespace netns of h ("" for h's).
func iperfIn(h *testnet.Host, netns, addr string, secs int, extra ...string) (float64, error) {
	var last error
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+30)*time.Second)
		args := append([]string{"iperf3", "-c", addr, "-t", strconv.Itoa(secs), "-O", "1", "-J"}, extra...)
		if netns != "" {
			args = append([]string{"ip", "netns", "exec", netns}, args...)
		}
		out, err := h.Run(ctx, args[0], args[1:]...)
		cancel()
		type sum struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		}
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived             sum `json:"sum_received"`
				SumReceivedBidirReverse sum `json:"sum_received_bidir_reverse"`
			} `json:"end"`
		}
		jerr := json.Unmarshal([]byte(out[max(strings.Index(out, "{"), 0):]), &res)
		if bps := res.End.SumReceived.BitsPerSecond + res.End.SumReceivedBidirReverse.BitsPerSecond; err == nil && jerr == nil && bps > 0 {
			return bps, nil
		}
		last = fmt.Errorf("%v %s", err, res.Error)
		// The server may not listen yet, or still be busy with the last test.
		if !strings.Contains(res.Error, "refused") && !strings.Contains(res.Error, "busy") {
			return 0, last
		}
		time.Sleep(500 * time.Millisecond)
	}
	return 0, last
}

// ---------------------------------------------------------------- report

type cniLatency struct{ add, del, both []time.Duration }

type ipamLatency struct{ alloc, rel, both []time.Duration }

type stateSize struct {
	peers          int
	bytes, perPeer float64
}

type report struct {
	start   time.Time
	cni     map[string]cniLatency
	ipam    *ipamLatency
	churn   *churnResult
	state   []stateSize
	journal []*journalCost
	// mergeAtRest: BenchmarkMergeAtRest's time per merge, by variant.
	mergeAtRest map[string]time.Duration

	mtu                int
	meshErr            string
	tput               map[string][]float64 // bits/s per round
	tputErr            map[string]string
	meshIdle, meshLoad []memory // host1 (sender), host2 (receiver)
	wgIdle, wgLoad     []memory
	bidir              []bidirResult
	cpu                map[string][]cpuSample // per round: "mesh", "wg"
	meshBidir, wgBidir []memory
	loadStart          string
	kdf                *kdfCost

	// Port isolation on and off (--no-port-isolation), one node.
	isoCNI  map[string]cniLatency // "on", "off"
	isoTput map[string][]float64
	isoErr  string

	restart *restartResult // part 7
	hostile *hostileResult // part 8
	relay   *relayResult   // part 9
	scale   *scaleResult   // part 10
	dual    *dualResult    // part 11
}

type bidirResult struct {
	name string
	bps  float64
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func mean(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r *report) print(w io.Writer) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("\n=== mesh benchmarks: %d CPUs, %s/%s, %s, %s ===\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version(), kernel())

	p("\n1. CNI ADD+DEL through libcni, %d pods per plugin, interleaved, one simulated host\n", cniPods)
	if r.cni == nil {
		p("   not measured (see the test log)\n")
	} else {
		p("   %-34s %10s %10s %10s %10s %10s %10s\n", "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "A+D p50", "A+D p99")
		names := map[string]string{"mesh": "mesh-cni (real daemon)", "ref": "bridge + host-local (reference)", "refLo": "bridge + host-local + loopback",
			"meshV4": "mesh-cni IPv4-only, taking turns", "meshDual": "mesh-cni dual-stack (IPv4+IPv6)"}
		for _, k := range []string{"mesh", "ref", "refLo", "meshV4", "meshDual"} {
			l, ok := r.cni[k]
			if !ok {
				continue
			}
			p("   %-34s %10s %10s %10s %10s %10s %10s\n", names[k], ms(pct(l.add, .5)), ms(pct(l.add, .99)),
				ms(pct(l.del, .5)), ms(pct(l.del, .99)), ms(pct(l.both, .5)), ms(pct(l.both, .99)))
		}
		if m, ok := r.cni["mesh"]; ok {
			if ref, ok := r.cni["ref"]; ok {
				ratio := float64(pct(m.both, .5)) / float64(pct(ref.both, .5))
				p("   ratio mesh/reference ADD+DEL p50 = %.2f  (p99 %.2f, ADD p50 %.2f)   goal <= 1.5: %s\n", ratio,
					float64(pct(m.both, .99))/float64(pct(ref.both, .99)),
					float64(pct(m.add, .5))/float64(pct(ref.add, .5)), verdict(ratio <= 1.5))
			}
		}
		if m, ok := r.cni["meshV4"]; ok {
			if d, ok := r.cni["meshDual"]; ok {
				p("   ratio dual-stack/IPv4-only ADD+DEL p50 = %.2f  (p99 %.2f, ADD p50 %.2f, DEL p50 %.2f)\n",
					float64(pct(d.both, .5))/float64(pct(m.both, .5)), float64(pct(d.both, .99))/float64(pct(m.both, .99)),
					float64(pct(d.add, .5))/float64(pct(m.add, .5)), float64(pct(d.del, .5))/float64(pct(m.del, .5)))
			}
		}
	}

	p("\n2. IPAM through the control socket (api.Client, one connection), %d allocations\n", ipamOps)
	if r.ipam == nil {
		p("   not measured (see the test log)\n")
	} else {
		p("   %-34s %10s %10s\n", "", "p50", "p99")
		p("   %-34s %10s %10s\n", "Allocate", ms(pct(r.ipam.alloc, .5)), ms(pct(r.ipam.alloc, .99)))
		p("   %-34s %10s %10s\n", "Release", ms(pct(r.ipam.rel, .5)), ms(pct(r.ipam.rel, .99)))
		p("   %-34s %10s %10s\n", "Allocate + Release", ms(pct(r.ipam.both, .5)), ms(pct(r.ipam.both, .99)))
	}
	p("   Allocate under churn (%d calls quiet, then one every 50 ms for %d s of faults):\n", churnOps, churnSecs)
	if r.churn == nil {
		p("   not measured (see the test log)\n")
	} else {
		r.churn.print(w)
	}
	p("   gossiped IPAM state (ipam BenchmarkStateSize):\n")
	if len(r.state) == 0 {
		p("   not measured (see the test log)\n")
	}
	for _, s := range r.state {
		p("   %5d peers %12.0f bytes %8.1f bytes/peer\n", s.peers, s.bytes, s.perPeer)
	}
	p("   Allocate + Release, state file on disk, 60 pods (ipam BenchmarkAllocateLargeState): journal record vs whole state file rewritten\n")
	if len(r.journal) == 0 {
		p("   not measured (see the test log)\n")
	}
	for _, c := range r.journal {
		p("   %5d peers %10.0f file bytes   journal %8s   rewrite %8s   ratio rewrite/journal %5.1f\n", c.peers, c.fileBytes, ms(c.journal), ms(c.rewrite), float64(c.rewrite)/float64(max(c.journal, 1)))
	}
	p("   push/pull merge of a 1000-peer signed state (ipam BenchmarkMergeAtRest): every info's heartbeat moved vs at rest without heartbeats (reclaim off)\n")
	if hb, at := r.mergeAtRest["heartbeats"], r.mergeAtRest["unchanged"]; hb == 0 || at == 0 {
		p("   not measured (see the test log)\n")
	} else {
		p("   heartbeats %8s   at rest %8s   ratio %5.1f\n", ms(hb), ms(at), float64(hb)/float64(at))
	}

	p("\n3. Data plane, iperf3 single TCP stream host1 -> host2, %d s x %d rounds (first second omitted), MTU %d\n", iperfSecs, iperfRounds, r.mtu)
	names := map[string]string{"veth": "(a) underlay veth", "mesh": "(b) mesh overlay (userspace)", "wg": "(c) bare wireguard-go",
		"mesh6": "(b6) mesh overlay, IPv6 inside"}
	gbps := map[string]float64{}
	for _, k := range []string{"veth", "mesh", "wg", "mesh6"} {
		v := r.tput[k]
		switch {
		case len(v) > 0:
			gbps[k] = mean(v) / 1e9
			var rs []string
			for _, x := range v {
				rs = append(rs, fmt.Sprintf("%.2f", x/1e9))
			}
			p("   %-34s %8.2f Gbit/s   (rounds: %s)\n", names[k], gbps[k], strings.Join(rs, ", "))
		case (k == "mesh" || k == "mesh6") && r.meshErr != "":
			p("   %-34s not measured: %s\n", names[k], firstLine(r.meshErr))
		default:
			p("   %-34s not measured: %s\n", names[k], firstLine(r.tputErr[k]))
		}
	}
	// Ratios of the means, and the median of the ratios of the runs of
	// one round (run back to back, so they share the machine's load).
	paired := func(a, b string) (float64, string) { return pairedRatios(r.tput[a], r.tput[b]) }
	if gbps["mesh"] > 0 && gbps["veth"] > 0 {
		med, txt := paired("mesh", "veth")
		p("   ratio overlay/veth              %.2f of the means, median per round %.2f (rounds: %s)\n", gbps["mesh"]/gbps["veth"], med, txt)
	}
	if gbps["mesh6"] > 0 && gbps["mesh"] > 0 {
		med, txt := paired("mesh6", "mesh")
		p("   ratio IPv6/IPv4 inside          %.2f of the means, median per round %.2f (rounds: %s)\n", gbps["mesh6"]/gbps["mesh"], med, txt)
	}
	if gbps["mesh"] > 0 && gbps["wg"] > 0 {
		med, txt := paired("mesh", "wg")
		ratio := gbps["mesh"] / gbps["wg"]
		p("   ratio overlay/bare wireguard-go %.2f of the means, median per round %.2f (rounds: %s)   goal >= 0.95: %s\n",
			ratio, med, txt, verdict(ratio >= 0.95))
	}
	for _, b := range r.bidir {
		p("   %-34s %8.2f Gbit/s   (iperf3 --bidir, both directions summed; for the memory bound)\n", names[b.name]+" bidir", b.bps/1e9)
	}
	r.printCPU(p)

	p("\n4. Memory (VmRSS idle after start; VmHWM = peak RSS after the iperf3 rounds)\n")
	p("   %-34s %12s %12s %12s %12s\n", "", "idle host1", "idle host2", "peak host1", "peak host2")
	row := func(name string, idle, load []memory) {
		if len(idle) < 2 || len(load) < 2 {
			p("   %-34s not measured\n", name)
			return
		}
		p("   %-34s %12s %12s %12s %12s\n", name, mib(idle[0].rss), mib(idle[1].rss), mib(load[0].hwm), mib(load[1].hwm))
	}
	row("mesh daemon", r.meshIdle, r.meshLoad)
	row("bare wireguard-go", r.wgIdle, r.wgLoad)
	if len(r.meshBidir) == 2 {
		p("   %-34s %12s %12s %12s %12s\n", "mesh daemon, after --bidir", "", "", mib(r.meshBidir[0].hwm), mib(r.meshBidir[1].hwm))
	}
	if len(r.wgBidir) == 2 {
		p("   %-34s %12s %12s %12s %12s\n", "bare wireguard-go, after --bidir", "", "", mib(r.wgBidir[0].hwm), mib(r.wgBidir[1].hwm))
	}
	if len(r.meshIdle) == 2 && len(r.meshLoad) == 2 {
		idle := max(r.meshIdle[0].rss, r.meshIdle[1].rss)
		anon := max(r.meshIdle[0].anon, r.meshIdle[1].anon)
		peak := max(r.meshLoad[0].hwm, r.meshLoad[1].hwm)
		p("   mesh daemon idle %s, of which anonymous %s, the rest the binary's mapped pages (goal <= 30 MB: %s)\n",
			mib(idle), mib(anon), verdict(idle <= 30e6))
		p("   mesh daemon peak %s single stream (goal <= 128 MB: %s)", mib(peak), verdict(peak <= 128e6))
		if len(r.meshBidir) == 2 {
			b := max(r.meshBidir[0].hwm, r.meshBidir[1].hwm)
			p(", %s with --bidir (%s)", mib(b), verdict(b <= 128e6))
		}
		p("\n")
	}
	r.kdf.print(p)
	r.printIsolation(p)
	r.printRestart(p)
	r.hostile.print(p)
	r.relay.print(p)
	r.scale.print(p)
	r.dual.print(p)
	p("\n   load average at start %s, at end %s (other work on the machine skews the throughput)\n", r.loadStart, loadavg())
	p("   total time %s\n\n", time.Since(r.start).Round(time.Second))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "linux"
	}
	return "linux " + strings.TrimSpace(string(b))
}

func grepLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
