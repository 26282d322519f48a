package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

var faultSeed = flag.Uint64("faults.seed", 0, "seed of TestFaultInjection's schedule (0: $MESH_FAULT_SEED, else the clock)")

// Fault injection settings. The cluster range is small so that space is
// contested (five peers share 61 usable addresses), and reclaim is on. In
// the long run (MESH_SOAK=1) its window is short, so that partitions and
// dead daemons outlast it, and pods whose node's space was reclaimed while
// they lived must keep their address and their traffic (docs/ipam.md,
// "Held addresses are routed to their holder"). In the short run of
// `make test` it is longer than the whole schedule, which is too short for
// a reclaim to happen reliably; TestReclaimedPodKeepsTraffic covers that
// case there.
const (
	faultHosts             = 5
	faultRange             = "10.40.0.0/26"
	faultReclaimAfter      = "20s"
	faultReclaimAfterShort = "5m"
	faultMaxDown           = 2  // daemons down at once: a majority stays up
	faultMaxPods           = 24 // live pods at most; ADDs beyond wait for DELs
	faultInFlight          = 6  // mesh-cni processes at once, on a 2-core machine
	faultOpTimeout         = 30 * time.Second
	faultGrace             = 30 * time.Second // the kubelet's default terminationGracePeriodSeconds
)

// faultSchedule is the executed schedule, printed with the seed on failure.
type faultSchedule struct {
	mu    sync.Mutex
	start time.Time
	lines []string
}

func (s *faultSchedule) logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, fmt.Sprintf("%6.1fs ", time.Since(s.start).Seconds())+fmt.Sprintf(format, args...))
}

func (s *faultSchedule) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// fpod is a pod of the fault injection test: a netns on a host, wired by
// the real mesh-cni through cnitool.
type fpod struct {
	host int
	name string
	addr netip.Addr
}

// faultRun is the state of one run.
type faultRun struct {
	t     *testing.T
	net   *testnet.Net
	nodes []*node
	rng   *rand.Rand
	sched *faultSchedule

	down  map[int]bool // daemons not running
	quiet bool         // no faults, only ADDs, DELs and waits

	mu      sync.Mutex
	live    []*fpod // ADD succeeded, no DEL started
	undead  []*fpod // DEL (or the DEL after a failed ADD) failed: retried at the end
	nextPod int
	ops     sync.WaitGroup
	sem     chan struct{}
}

func faultSeedValue(t *testing.T) uint64 {
	if *faultSeed != 0 {
		return *faultSeed
	}
	if s := os.Getenv("MESH_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("invalid MESH_FAULT_SEED %q: %v", s, err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// TestFaultInjection runs real daemons and mesh-cni on five simulated hosts
// through a seeded random schedule of kill -9 and SIGTERM with restarts,
// symmetric and one-way partitions and heals, and parallel pod ADDs and
// DELs. Afterwards, everything healed and converged: no address is on two
// live pods (read from the pods' netns), each live pod's address is held
// by its node, every pod reaches every other, and all rings are equal.
// MESH_SOAK=1 lengthens the schedule; on failure the seed and the schedule
// are printed (replay with -faults.seed=N or MESH_FAULT_SEED=N).
func TestFaultInjection(t *testing.T) {
	testnet.RequireRoot(t)
	seed := faultSeedValue(t)
	steps, maxWait, reclaimAfter := 30, 4*time.Second, faultReclaimAfterShort
	if os.Getenv("MESH_SOAK") != "" {
		steps, maxWait, reclaimAfter = 150, 30*time.Second, faultReclaimAfter
	}
	// MESH_FAULT_QUIET=1 runs the schedule without faults (ADDs, DELs and
	// waits only): a check of the harness and its assertions themselves.
	quiet := os.Getenv("MESH_FAULT_QUIET") != ""
	r := &faultRun{
		quiet: quiet,
		t:     t,
		rng:   rand.New(rand.NewPCG(seed, 0x6d657368)),
		sched: &faultSchedule{},
		down:  map[int]bool{},
		sem:   make(chan struct{}, faultInFlight),
	}
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("TestFaultInjection seed %d (replay: go test ./e2e -run TestFaultInjection -faults.seed=%d), schedule:\n%s", seed, seed, r.sched)
		}
	})
	r.net = testnet.New(t, testnet.Options{Hosts: faultHosts, Prefix: "fi"})
	hosts := r.net.Hosts()
	for i, h := range hosts {
		peers := slices.Delete(slices.Clone(hosts), i, i+1)
		r.nodes = append(r.nodes, launch(t, h, peers, "--ipalloc-range", faultRange, "--ipalloc-reclaim-after", reclaimAfter))
	}
	dumpLogsOnFailure(t, r.nodes...)
	expectStates(t, detectTimeout, r.nodes, allAlive(r.nodes), true)
	waitConnected(t, r.nodes)
	for _, n := range r.nodes {
		waitCNIInstalled(t, n)
	}
	cnitool(t) // built once, before the goroutines need it

	r.sched.start = time.Now()
	r.sched.logf("seed %d, %d steps, quiet %v", seed, steps, quiet)
	for range steps {
		r.step(maxWait)
	}
	r.ops.Wait()
	r.settle()
	r.check()
}

// step runs one random action of the schedule.
func (r *faultRun) step(maxWait time.Duration) {
	t := r.t
	i := r.rng.IntN(len(r.nodes))
	n := r.nodes[i]
	k := r.rng.IntN(100)
	if r.quiet && k < 48 {
		k += 48 // the same draws, no fault
	}
	switch {
	case k < 12: // kill -9, or restart a dead one
		if r.down[i] {
			r.restart(i)
		} else if len(r.down) < faultMaxDown {
			r.sched.logf("kill -9 %s", n.Host.Name)
			if err := n.Proc.Kill(); err != nil {
				t.Fatal(err)
			}
			r.down[i] = true
		}
	case k < 22: // SIGTERM, or restart
		if r.down[i] {
			r.restart(i)
		} else if len(r.down) < faultMaxDown {
			r.sched.logf("SIGTERM %s", n.Host.Name)
			// Past the kubelet's default grace period the daemon is
			// killed, as the kubelet would: the schedule goes on (a
			// slow stop is not what this test is about, and a kill
			// must be safe anyway), noted in the schedule.
			if err := n.Proc.Stop(faultGrace); err != nil {
				r.sched.logf("SIGTERM %s: %v", n.Host.Name, err)
			}
			r.down[i] = true
		}
	case k < 30: // symmetric partition into two random sides
		a, b := r.split()
		r.sched.logf("partition %s | %s", names(a), names(b))
		if err := r.net.Partition(a, b); err != nil {
			t.Fatal(err)
		}
	case k < 38: // one-way partition
		a, b := r.split()
		r.sched.logf("one-way %s -> %s dropped", names(a), names(b))
		if err := r.net.PartitionOneWay(a, b); err != nil {
			t.Fatal(err)
		}
	case k < 48:
		r.sched.logf("heal")
		if err := r.net.Heal(); err != nil {
			t.Fatal(err)
		}
	case k < 78:
		r.adds(1 + r.rng.IntN(5))
	case k < 90:
		r.dels(1 + r.rng.IntN(2))
	default:
		d := time.Duration(r.rng.Int64N(int64(maxWait)))
		r.sched.logf("wait %s", d.Round(100*time.Millisecond))
		time.Sleep(d)
		return
	}
	// A short pause lets gossip act between faults.
	time.Sleep(time.Duration(200+r.rng.IntN(800)) * time.Millisecond)
}

func (r *faultRun) restart(i int) {
	r.sched.logf("restart %s", r.nodes[i].Host.Name)
	r.nodes[i].Start()
	delete(r.down, i)
}

// split picks two disjoint non-empty random groups of hosts.
func (r *faultRun) split() (a, b []*testnet.Host) {
	hosts := r.net.Hosts()
	for {
		a, b = nil, nil
		for _, h := range hosts {
			switch r.rng.IntN(3) {
			case 0:
				a = append(a, h)
			case 1:
				b = append(b, h)
			}
		}
		if len(a) > 0 && len(b) > 0 {
			return a, b
		}
	}
}

func names(hs []*testnet.Host) string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return strings.Join(out, ",")
}

// adds starts count pod ADDs on random hosts without waiting for them.
func (r *faultRun) adds(count int) {
	r.mu.Lock()
	room := faultMaxPods - len(r.live)
	r.mu.Unlock()
	for range min(count, room) {
		r.mu.Lock()
		p := &fpod{host: r.rng.IntN(len(r.nodes)), name: fmt.Sprintf("fp%03d", r.nextPod)}
		r.nextPod++
		r.mu.Unlock()
		r.sched.logf("ADD %s on %s", p.name, r.nodes[p.host].Host.Name)
		r.ops.Add(1)
		go r.add(p)
	}
}

func (r *faultRun) add(p *fpod) {
	defer r.ops.Done()
	r.sem <- struct{}{}
	defer func() { <-r.sem }()
	h := r.nodes[p.host].Host
	ctx, cancel := context.WithTimeout(context.Background(), faultOpTimeout)
	defer cancel()
	if out, err := h.Run(ctx, "ip", "netns", "add", p.name); err != nil {
		r.t.Errorf("ip netns add %s on %s: %v: %s", p.name, h.Name, err, out)
		return
	}
	out, err := runCNI(ctx, r.t, h, "add", "mesh", "/run/netns/"+p.name)
	if err != nil {
		// Expected while the daemon is down, cut off or out of space.
		// As a runtime does, DEL what the failed ADD may have left.
		r.sched.logf("ADD %s failed: %s", p.name, lastLine(out, err))
		r.del(p)
		return
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		r.t.Errorf("bad ADD result of %s: %q: %v", p.name, out, err)
		return
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		r.t.Errorf("bad address in the ADD result of %s: %v", p.name, err)
		return
	}
	p.addr = pfx.Addr()
	r.sched.logf("ADD %s on %s = %s", p.name, h.Name, p.addr)
	r.mu.Lock()
	r.live = append(r.live, p)
	r.mu.Unlock()
}

// dels starts count DELs of random live pods without waiting for them.
func (r *faultRun) dels(count int) {
	for range count {
		r.mu.Lock()
		if len(r.live) == 0 {
			r.mu.Unlock()
			return
		}
		j := r.rng.IntN(len(r.live))
		p := r.live[j]
		r.live = slices.Delete(r.live, j, j+1)
		r.mu.Unlock()
		r.sched.logf("DEL %s (%s) on %s", p.name, p.addr, r.nodes[p.host].Host.Name)
		r.ops.Add(1)
		go func() {
			defer r.ops.Done()
			r.sem <- struct{}{}
			defer func() { <-r.sem }()
			r.del(p)
		}()
	}
}

// del runs DEL; on success it removes the netns, on failure (the daemon
// is down: code 11) it keeps the pod for a retry once everything is up, as
// the kubelet retries a failed DEL.
func (r *faultRun) del(p *fpod) {
	h := r.nodes[p.host].Host
	ctx, cancel := context.WithTimeout(context.Background(), faultOpTimeout)
	defer cancel()
	if out, err := runCNI(ctx, r.t, h, "del", "mesh", "/run/netns/"+p.name); err != nil {
		r.sched.logf("DEL %s failed: %s", p.name, lastLine(out, err))
		r.mu.Lock()
		r.undead = append(r.undead, p)
		r.mu.Unlock()
		return
	}
	if out, err := h.Run(ctx, "ip", "netns", "del", p.name); err != nil {
		r.t.Errorf("ip netns del %s on %s: %v: %s", p.name, h.Name, err, out)
	}
}

// lastLine is the gist of a failed cnitool run: the plugin's message.
func lastLine(out string, err error) string {
	s := strings.TrimSpace(out)
	if s == "" {
		s = err.Error()
	}
	lines := strings.Split(s, "\n")
	return lines[len(lines)-1]
}

// settle heals everything, restarts stopped daemons, retries failed DELs
// and waits (bounded) until the mesh has converged.
func (r *faultRun) settle() {
	t := r.t
	r.sched.logf("settle: heal, restart, retry DELs")
	if err := r.net.Heal(); err != nil {
		t.Fatal(err)
	}
	for i := range r.nodes {
		if r.down[i] {
			r.restart(i)
		}
	}
	expectStates(t, 2*detectTimeout, r.nodes, allAlive(r.nodes), true)
	testnet.Eventually(t, 90*time.Second, 2*time.Second, func() error {
		r.mu.Lock()
		retry := r.undead
		r.undead = nil
		r.mu.Unlock()
		for _, p := range retry {
			r.del(p)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.undead) > 0 {
			return fmt.Errorf("%d DELs still fail", len(r.undead))
		}
		return nil
	})
	// Rings equal and every node ready, read as an operator does.
	testnet.Eventually(t, 120*time.Second, time.Second, func() error {
		var first *api.IPAM
		for _, n := range r.nodes {
			st, err := r.ipamStatus(n)
			if err != nil {
				return err
			}
			if st.Status != "ready" {
				return fmt.Errorf("%s: IPAM %q, problems %v", n.Host.Name, st.Status, st.Problems)
			}
			if first == nil {
				first = st
			} else if !reflect.DeepEqual(st.Ranges, first.Ranges) {
				return fmt.Errorf("%s's ring %v differs from %s's %v", n.Host.Name, st.Ranges, r.nodes[0].Host.Name, first.Ranges)
			}
		}
		return nil
	})
	waitConnected(t, r.nodes)
	r.sched.logf("settled")
}

// ipamStatus is `mesh status ipam -o json` on n.
func (r *faultRun) ipamStatus(n *node) (*api.IPAM, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Host.Run(ctx, n.Bin, "status", "ipam", "-o", "json")
	if err != nil {
		return nil, err
	}
	var st api.IPAM
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("bad `mesh status ipam -o json` on %s: %q: %w", n.Host.Name, out, err)
	}
	return &st, nil
}

// check asserts the end state.
func (r *faultRun) check() {
	t := r.t
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r.mu.Lock()
	pods := slices.Clone(r.live)
	r.mu.Unlock()
	t.Logf("%d live pods after %d created", len(pods), r.nextPod)

	// The pods' own addresses, from their netns: each holds exactly the
	// address ADD gave it, and no address is on two pods.
	holder := map[netip.Addr]string{}
	for _, p := range pods {
		n := r.nodes[p.host]
		got := netnsAddrs(ctx, t, n, p.name)
		if len(got) != 1 || got[0] != p.addr {
			t.Errorf("pod %s on %s holds %v, want exactly %s", p.name, n.Host.Name, got, p.addr)
		}
		for _, a := range got {
			if other, dup := holder[a]; dup {
				t.Errorf("address %s is on two live pods: %s and %s on %s", a, other, p.name, n.Host.Name)
			}
			holder[a] = p.name + " on " + n.Host.Name
		}
	}
	// Each live pod's address is still allocated by its node, and no
	// other node holds it; no node reports a conflict.
	allocated := map[netip.Addr][]string{}
	for _, n := range r.nodes {
		allocs, err := n.Client().Allocations(ctx)
		if err != nil {
			t.Fatalf("allocations of %s: %v", n.Host.Name, err)
		}
		for _, a := range allocs {
			addr := netip.MustParsePrefix(a.Address).Addr()
			allocated[addr] = append(allocated[addr], n.Host.Name)
		}
		st, err := r.ipamStatus(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Problems {
			if strings.Contains(p, "held by two peers") {
				t.Errorf("%s reports: %s", n.Host.Name, p)
			}
		}
	}
	for _, p := range pods {
		if by := allocated[p.addr]; len(by) != 1 || by[0] != r.nodes[p.host].Host.Name {
			t.Errorf("pod %s's address %s is allocated by %v, want by %s alone", p.name, p.addr, by, r.nodes[p.host].Host.Name)
		}
	}
	// Each pod's gateway (its default route's) is its node's overlay IP,
	// still on the node's bridge: the gateway never moves under a pod.
	for _, p := range pods {
		n := r.nodes[p.host]
		gw := podGateway(ctx, t, n, p.name)
		st := n.MustStatus()
		if gw.String() != st.OverlayIP {
			t.Errorf("pod %s on %s routes through gateway %s, but the node's overlay IP is now %q", p.name, n.Host.Name, gw, st.OverlayIP)
		}
		out, err := n.Host.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "mesh")
		if err != nil || !strings.Contains(out, " "+gw.String()+"/") {
			t.Errorf("gateway %s of pod %s is not on %s's bridge: %v\n%s", gw, p.name, n.Host.Name, err, out)
		}
	}
	if t.Failed() {
		return
	}
	// Every pod reaches every other pod (bounded: WireGuard handshakes of
	// restarted peers may still be under way).
	testnet.Eventually(t, 90*time.Second, 2*time.Second, func() error {
		errs := make(chan error, len(pods))
		for _, p := range pods {
			go func() { errs <- r.pingAll(ctx, p, pods) }()
		}
		var failed []string
		for range pods {
			if err := <-errs; err != nil {
				failed = append(failed, err.Error())
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("unreachable:\n%s", strings.Join(failed, "\n"))
		}
		return nil
	})
}

// pingAll pings every other pod from p's netns and names those that did
// not answer.
func (r *faultRun) pingAll(ctx context.Context, p *fpod, pods []*fpod) error {
	var targets []string
	for _, q := range pods {
		if q != p {
			targets = append(targets, q.addr.String())
		}
	}
	if len(targets) == 0 {
		return nil
	}
	script := `for a in "$@"; do ping -c 1 -W 2 -q "$a" >/dev/null 2>&1 || echo "$a"; done`
	h := r.nodes[p.host].Host
	args := append([]string{"netns", "exec", p.name, "sh", "-c", script, "ping-all"}, targets...)
	out, err := h.Run(ctx, "ip", args...)
	if err != nil {
		return fmt.Errorf("%s on %s: %v: %s", p.name, h.Name, err, out)
	}
	if s := strings.TrimSpace(out); s != "" {
		return fmt.Errorf("%s (%s) on %s cannot reach %s", p.name, p.addr, h.Name, strings.ReplaceAll(s, "\n", ", "))
	}
	return nil
}

// podGateway is the gateway of the default route in the netns name of n's
// host.
func podGateway(ctx context.Context, t *testing.T, n *node, name string) netip.Addr {
	t.Helper()
	out, err := n.Host.Run(ctx, "ip", "netns", "exec", name, "ip", "-4", "-j", "route", "show", "default")
	if err != nil {
		t.Fatalf("default route of netns %s on %s: %v\n%s", name, n.Host.Name, err, out)
	}
	var routes []struct {
		Gateway string `json:"gateway"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil || len(routes) != 1 {
		t.Fatalf("default route of netns %s on %s: %q: %v", name, n.Host.Name, out, err)
	}
	gw, err := netip.ParseAddr(routes[0].Gateway)
	if err != nil {
		t.Fatalf("gateway of netns %s on %s: %v", name, n.Host.Name, err)
	}
	return gw
}
