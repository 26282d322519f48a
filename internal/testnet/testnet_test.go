package testnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestConnectivity(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 3})
	hosts := n.Hosts()
	if len(hosts) != 3 {
		t.Fatalf("got %d hosts, want 3", len(hosts))
	}
	for i, h := range hosts {
		if want := fmt.Sprintf("192.0.2.%d", 11+i); h.Addr.String() != want {
			t.Errorf("%s has address %s, want %s", h.Name, h.Addr, want)
		}
		startEcho(t, h)
	}
	for _, from := range hosts {
		for _, to := range hosts {
			if err := reach(from, to.Addr, 5*time.Second); err != nil {
				t.Errorf("%s cannot reach %s: %v", from, to, err)
			}
		}
	}
	// ping is not in a minimal Debian; use it when it is there.
	if _, err := exec.LookPath("ping"); err == nil {
		if out, err := hosts[0].Run(ctxT(t), "ping", "-c", "1", "-W", "5", hosts[1].Addr.String()); err != nil {
			t.Errorf("ping: %v", err)
		} else {
			t.Logf("ping: %s", out)
		}
	}
}

func TestHostIdentity(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 2, MTU: 1400})
	h := n.Hosts()[1]
	out, err := h.Run(ctxT(t), "hostname")
	if err != nil || strings.TrimSpace(out) != h.Name {
		t.Errorf("hostname in %s = %q, %v; want %q", h.Name, out, err, h.Name)
	}
	// /sys is the host's own sysfs: only its links.
	out, err = h.Run(ctxT(t), "ls", "/sys/class/net")
	if err != nil || strings.Join(strings.Fields(out), " ") != "eth0 lo" {
		t.Errorf("/sys/class/net in %s = %q, %v; want eth0 and lo", h.Name, out, err)
	}
	out, err = h.Run(ctxT(t), "cat", "/sys/class/net/eth0/mtu")
	if err != nil || strings.TrimSpace(out) != "1400" {
		t.Errorf("eth0 mtu in %s = %q, %v; want 1400", h.Name, out, err)
	}
	out, err = h.Run(ctxT(t), "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(out, h.Addr.String()+"/24") {
		t.Errorf("eth0 of %s: %q, %v; want %s/24", h.Name, out, err, h.Addr)
	}
}

func TestPrivateDirs(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 2})
	a, b := n.Hosts()[0], n.Hosts()[1]
	name := filepath.Base(n.Dir()) // unique to this run, also in the root /run
	for _, dir := range []string{"/run", "/var/run", "/var/lib/mesh", "/etc/cni", "/opt/cni"} {
		p := dir + "/" + name
		if _, err := a.Run(ctxT(t), "sh", "-c", "echo hi > "+p); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Run(ctxT(t), "test", "-e", p); err != nil {
			t.Errorf("%s not visible in %s itself: %v", p, a.Name, err)
		}
		if _, err := b.Run(ctxT(t), "test", "-e", p); err == nil {
			t.Errorf("%s written in %s is visible in %s", p, a.Name, b.Name)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s written in %s is visible in the root namespace", p, a.Name)
		}
		if data, err := os.ReadFile(a.Path(p)); err != nil || string(data) != "hi\n" {
			t.Errorf("reading %s of %s through Path: %q, %v", p, a.Name, data, err)
		}
	}

	pod := "pod-" + name
	if _, err := a.Run(ctxT(t), "ip", "netns", "add", pod); err != nil {
		t.Fatal(err)
	}
	if out, err := a.Run(ctxT(t), "ip", "netns", "list"); err != nil || !strings.Contains(out, pod) {
		t.Errorf("ip netns list in %s = %q, %v; want %s", a.Name, out, err, pod)
	}
	if out, err := b.Run(ctxT(t), "ip", "netns", "list"); err != nil || strings.Contains(out, pod) {
		t.Errorf("ip netns list in %s = %q, %v; want no %s", b.Name, out, err, pod)
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil || strings.Contains(string(out), pod) {
		t.Errorf("ip netns list in the root namespace = %q, %v; want no %s", out, err, pod)
	}
	// The pod namespace works inside the host: it can be entered and has lo.
	if out, err := a.Run(ctxT(t), "ip", "netns", "exec", pod, "ip", "-o", "link"); err != nil || !strings.Contains(out, "lo") {
		t.Errorf("ip netns exec %s in %s: %q, %v", pod, a.Name, out, err)
	}
}

// TestConnectivityIPv6: with an IPv6 subnet the hosts have an IPv6
// underlay alone, usable at once (a tentative address could not be bound
// by startEcho).
func TestConnectivityIPv6(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 2, Subnet: netip.MustParsePrefix("fd98::/64")})
	hosts := n.Hosts()
	for i, h := range hosts {
		if want := fmt.Sprintf("fd98::%x", 11+i); h.Addr.String() != want {
			t.Errorf("%s has address %s, want %s", h.Name, h.Addr, want)
		}
		if out, err := h.Run(ctxT(t), "ip", "-4", "-o", "addr", "show", "dev", "eth0"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s has IPv4 on eth0 (%v): %s", h.Name, err, out)
		}
		startEcho(t, h)
	}
	for _, pair := range [][2]*Host{{hosts[0], hosts[1]}, {hosts[1], hosts[0]}} {
		if err := reach(pair[0], pair[1].Addr, 5*time.Second); err != nil {
			t.Errorf("%s cannot reach %s: %v", pair[0], pair[1], err)
		}
	}
}

func TestPartition(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 3})
	h := n.Hosts()
	a, b, c := h[0], h[1], h[2]
	for _, x := range h {
		startEcho(t, x)
	}
	if err := n.Partition([]*Host{a}, []*Host{b, c}); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]*Host{{a, b}, {b, a}, {a, c}, {c, a}} {
		if err := reach(pair[0], pair[1].Addr, 500*time.Millisecond); err == nil {
			t.Errorf("%s reaches %s across the partition", pair[0], pair[1])
		}
	}
	for _, pair := range [][2]*Host{{b, c}, {c, b}} {
		if err := reach(pair[0], pair[1].Addr, 5*time.Second); err != nil {
			t.Errorf("%s cannot reach %s on the same side: %v", pair[0], pair[1], err)
		}
	}
	if err := n.Partition([]*Host{a}, []*Host{a}); err == nil {
		t.Error("partitioning a host from itself succeeded")
	}
	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		return errors.Join(reach(a, b.Addr, time.Second), reach(c, a.Addr, time.Second))
	})
	if err := n.Heal(); err != nil {
		t.Errorf("second Heal: %v", err)
	}
}

func TestAddHost(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 1})
	h2 := n.AddHost(t)
	if h2.Name != "host2" || h2.Addr.String() != "192.0.2.12" || len(n.Hosts()) != 2 {
		t.Fatalf("added %s, hosts %v", h2, n.Hosts())
	}
	startEcho(t, h2)
	if err := reach(n.Hosts()[0], h2.Addr, 5*time.Second); err != nil {
		t.Error(err)
	}
}

func TestProc(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 1})
	h := n.Hosts()[0]

	p := h.Start(t, "sleep", []string{"1000"}, nil)
	if p.Exited() {
		t.Fatal("sleep exited at once")
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("sleep not exited after Kill")
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(p.PID())); err == nil {
		t.Errorf("process %d still exists after Kill", p.PID())
	}

	// Stop: SIGTERM is enough for sh, and the environment is passed on.
	p = h.Start(t, "sh", []string{"-c", `echo "v=$TESTNET_V host=$(hostname)"; exec sleep 1000`}, []string{"TESTNET_V=42"})
	Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(p.Log(), "v=42 host="+h.Name) {
			return errors.New("log is " + p.Log())
		}
		return nil
	})
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("Stop: %v", err)
	}
	// A process ignoring SIGTERM is killed after the timeout.
	p = h.Start(t, "sh", []string{"-c", `trap "" TERM; echo ready; while :; do sleep 0.1; done`}, nil)
	Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(p.Log(), "ready") {
			return errors.New("not ready")
		}
		return nil
	})
	if err := p.Stop(200 * time.Millisecond); err == nil {
		t.Error("Stop of a process ignoring SIGTERM returned nil")
	}
	if !p.Exited() {
		t.Error("process ignoring SIGTERM still running after Stop")
	}
	if err := p.Wait(time.Second); err == nil {
		t.Error("Wait of a killed process returned nil")
	}
}

func TestBuildBinary(t *testing.T) {
	RequireRoot(t)
	bin := BuildBinary(t, "./internal/testnet/testdata/echo")
	if again := BuildBinary(t, "./internal/testnet/testdata/echo"); again != bin {
		t.Errorf("second build gave %s, want the cached %s", again, bin)
	}
	if filepath.Base(bin) != "echo" {
		t.Errorf("binary is named %s, want echo", filepath.Base(bin))
	}
	n := New(t, Options{Hosts: 2})
	a, b := n.Hosts()[0], n.Hosts()[1]
	p := b.Start(t, bin, []string{"-listen", ":7000"}, nil)
	Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		ctx := ctxT(t)
		c, err := a.Dial(ctx, "tcp", b.Addr.String()+":7000")
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(ctx, c)
	})
	if !strings.Contains(p.Log(), "listening") {
		t.Errorf("log of echo: %q", p.Log())
	}
}

func TestKillAll(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 1})
	h := n.Hosts()[0]
	p := h.Start(t, "sleep", []string{"1000"}, nil)
	pid := escapee(t, h, "pod1")
	if err := h.KillAll(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("started process survived KillAll")
	}
	if err := syscall.Kill(pid, 0); err == nil && !isZombie(pid) {
		t.Errorf("process %d in a pod namespace survived KillAll", pid)
	}
	// The host itself (namespaces, mounts) survives, like a rebooted machine.
	if _, err := h.Run(ctxT(t), "test", "-d", "/run/netns"); err != nil {
		t.Errorf("host unusable after KillAll: %v", err)
	}
}

func TestPartitionOneWay(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 2})
	a, b := n.Hosts()[0], n.Hosts()[1]
	if err := n.PartitionOneWay([]*Host{a}, []*Host{b}); err != nil {
		t.Fatal(err)
	}
	// UDP, as a one-way link carries no TCP handshake either way.
	if err := udpArrives(a, b, 500*time.Millisecond); err == nil {
		t.Errorf("%s reaches %s against the one-way partition", a, b)
	}
	if err := udpArrives(b, a, 5*time.Second); err != nil {
		t.Errorf("%s cannot reach %s in the open direction: %v", b, a, err)
	}
	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, 100*time.Millisecond, func() error { return udpArrives(a, b, time.Second) })
}

// udpArrives sends datagrams from one host to a listener on another and
// says whether one arrived within d.
func udpArrives(from, to *Host, d time.Duration) error {
	pc, err := to.ListenPacket("udp4", to.Addr.String()+":0")
	if err != nil {
		return err
	}
	defer pc.Close()
	conn, err := from.Dial(context.Background(), "udp4", pc.LocalAddr().String())
	if err != nil {
		return err
	}
	defer conn.Close()
	pc.SetReadDeadline(time.Now().Add(d))
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			conn.Write([]byte("ping"))
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	buf := make([]byte, 16)
	if _, _, err := pc.ReadFrom(buf); err != nil {
		return fmt.Errorf("nothing from %s at %s: %w", from, to, err)
	}
	return nil
}
