package testnet

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rootState is what of ours could leak into the root namespaces.
type rootState struct {
	netns, links string
}

func snapshot(t *testing.T) rootState {
	t.Helper()
	netns, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, netns)
	}
	links, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show: %v: %s", err, links)
	}
	// Link statistics and flags change; names do not.
	var names []string
	for _, l := range strings.Split(string(links), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return rootState{netns: string(netns), links: strings.Join(names, " ")}
}

// leftovers describes whatever of dir is still mounted or present.
func leftovers(t *testing.T, dir string, pids []int) []string {
	t.Helper()
	var res []string
	mounts, err := mountsUnder(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		res = append(res, "mount "+m.Point)
	}
	if _, err := os.Stat(dir); err == nil {
		res = append(res, "directory "+dir)
	}
	if root := cgroup2Root(); root != "" {
		if _, err := os.Stat(filepath.Join(root, filepath.Base(dir))); err == nil {
			res = append(res, "cgroup "+filepath.Base(dir))
		}
	}
	for _, pid := range pids {
		// A zombie is dead; reaping it is up to its parent (PID 1 for
		// the daemons here, which may not reap in a container).
		if err := syscall.Kill(pid, 0); err == nil && !isZombie(pid) {
			res = append(res, "process "+strconv.Itoa(pid))
		}
	}
	return res
}

// escapee starts, in h, a process that leaves the host's namespaces and
// process group (a daemon in a pod namespace) and returns its PID.
func escapee(t *testing.T, h *Host, pod string) int {
	t.Helper()
	ctx := ctxT(t)
	if _, err := h.Run(ctx, "ip", "netns", "add", pod); err != nil {
		t.Fatal(err)
	}
	out, err := h.Run(ctx, "sh", "-c", "setsid ip netns exec "+pod+" sleep 1000 >/dev/null 2>&1 </dev/null & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("PID of escapee: %q: %v", out, err)
	}
	return pid
}

func TestCleanupLeavesNothing(t *testing.T) {
	RequireRoot(t)
	before := snapshot(t)
	var dir string
	var pids []int
	t.Run("net", func(t *testing.T) {
		n := New(t, Options{Hosts: 2})
		dir = n.Dir()
		h := n.Hosts()[0]
		pids = append(pids, h.Start(t, "sleep", []string{"1000"}, nil).PID())
		pids = append(pids, escapee(t, h, "pod1"))
		if _, err := h.Run(ctxT(t), "ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1"); err != nil {
			t.Fatal(err)
		}
		if err := n.Partition(n.Hosts()[:1], n.Hosts()[1:]); err != nil {
			t.Fatal(err)
		}
	})
	if left := leftovers(t, dir, pids); len(left) > 0 {
		t.Errorf("left behind after cleanup: %q", left)
	}
	if after := snapshot(t); after != before {
		t.Errorf("root namespace changed:\nbefore %+v\nafter  %+v", before, after)
	}
}

func TestCleanupStale(t *testing.T) {
	RequireRoot(t)
	const prefix = "stalet"
	// A live run with the same prefix must survive.
	live := New(t, Options{Prefix: prefix, Hosts: 1})

	// A run whose test process "died": built without a cleanup, then owned
	// by a process that does not exist.
	n, err := newNet(Options{Prefix: prefix, Subnet: defaultSubnet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.setupSwitch(); err != nil {
		t.Fatal(err)
	}
	h, err := n.addHost(nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.start("sleep", []string{"1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{p.PID(), escapee(t, h, "pod1")}
	if err := os.WriteFile(filepath.Join(n.Dir(), ownerFile), []byte(strconv.Itoa(os.Getpid())+" 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := CleanupStale(prefix); err != nil {
		t.Fatal(err)
	}
	if err := p.waitDone(5 * time.Second); err != nil {
		t.Error(err)
	}
	// Eventually: a test process of another package may be the one doing the
	// cleanup, concurrently.
	Eventually(t, 15*time.Second, 50*time.Millisecond, func() error {
		if left := leftovers(t, n.Dir(), pids); len(left) > 0 {
			return fmt.Errorf("left behind after CleanupStale: %q", left)
		}
		return nil
	})
	if _, err := os.Stat(live.Dir()); err != nil {
		t.Errorf("CleanupStale removed a live run: %v", err)
	}
	if _, err := live.Hosts()[0].Run(ctxT(t), "true"); err != nil {
		t.Errorf("live run broken after CleanupStale: %v", err)
	}
}

func isZombie(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || strings.HasPrefix(s[i+1:], " Z")
}

// fakeTB records failures and cleanups instead of acting on them, to test
// what New leaves behind when it fails.
type fakeTB struct {
	*testing.T
	mu       sync.Mutex
	failures []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.failures) > 0
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func TestCleanupAfterFailedSetup(t *testing.T) {
	RequireRoot(t)
	before := snapshot(t)
	f := &fakeTB{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A /28 has room for hosts 1 to 4 only: New fails on host 5,
		// after building the switch and four hosts.
		New(f, Options{Prefix: "failedt", Hosts: 6, Subnet: netip.MustParsePrefix("192.0.2.0/28")})
	}()
	<-done
	if !f.Failed() {
		t.Fatal("New with too many hosts for its subnet did not fail")
	}
	t.Logf("New failed as expected: %v", f.failures)
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "failedt-*"))
	if len(dirs) != 1 {
		t.Fatalf("want one run directory of the failed New, got %q", dirs)
	}
	f.failures = nil
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	if len(f.failures) > 0 {
		t.Errorf("cleanup failed: %v", f.failures)
	}
	if left := leftovers(t, dirs[0], nil); len(left) > 0 {
		t.Errorf("left behind after cleanup of a failed New: %q", left)
	}
	if after := snapshot(t); after != before {
		t.Errorf("root namespace changed:\nbefore %+v\nafter  %+v", before, after)
	}
}
