package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// restartPingInterval is the probe interval of the restart tests.
const restartPingInterval = 20 * time.Millisecond

// restartLossBound bounds the traffic a restart of one daemon may stop
// (the longest run of lost probes). Measured on this project's machine:
// see docs/performance.md; the bound is generous so that a loaded 2-core
// machine does not make the test flaky, and still far below what a leave
// (the others drop the peer) or a first reconcile on an empty view cost.
const restartLossBound = 3 * time.Second

// twoHostsWithPods starts a two-node mesh with one pod on each host.
func twoHostsWithPods(t *testing.T, prefix string) (*testnet.Net, []*node, []*meshtest.Pod) {
	t.Helper()
	return twoHostsWithPodsArgs(t, prefix)
}

// twoHostsWithPodsArgs is twoHostsWithPods with more flags for both
// daemons.
func twoHostsWithPodsArgs(t *testing.T, prefix string, extra ...string) (*testnet.Net, []*node, []*meshtest.Pod) {
	t.Helper()
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 2, Prefix: prefix})
	hosts := net.Hosts()
	// Key files, the recommended setup: a password would add its Argon2id
	// run (about 0.35 s here) to every start.
	nodes := []*node{
		launch(t, hosts[0], nil, append(meshtest.KeyFileArgs(t, hosts[0]), extra...)...),
		launch(t, hosts[1], hosts[:1], append(meshtest.KeyFileArgs(t, hosts[1]), extra...)...),
	}
	dumpLogsOnFailure(t, nodes...)
	waitConnected(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var pods []*meshtest.Pod
	for i, n := range nodes {
		waitCNIInstalled(t, n)
		p, err := meshtest.AddPod(ctx, t, n.Host, []string{"pa", "pb"}[i])
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		_, err := pods[0].Host.Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "1", "-W", "2", pods[1].IP.String())
		return err
	})
	return net, nodes, pods
}

// restartLostPings bounds the pings (at restartPingInterval) a restart of
// the daemon may lose with the data plane in its own process (the
// default): the goal is none, as the process forwards throughout; one is
// allowed for a probe that a loaded machine delays past ping's timeout.
const restartLostPings = 1

// TestRestartKeepsPodTraffic: a pod on host A pings a pod on host B every
// 20 ms while B's daemon is (a) stopped with SIGTERM and launched again,
// (b) stopped and launched as a different build (an upgrade), (c) killed
// with SIGKILL and launched again. The userspace data plane runs in its own
// mesh-dataplane process, which every restart leaves running (the same PID
// before and after, and status counts no restart of it): each loses at
// most restartLostPings, and leaves exactly one daemon, one data-plane
// process and one TUN device behind.
func TestRestartKeepsPodTraffic(t *testing.T) {
	_, nodes, pods := twoHostsWithPods(t, "rst")
	b := nodes[1]
	// The same tree built a second time with another version string.
	upgrade := testnet.BuildMakeRevision(t, "HEAD") + "/mesh"
	oldVersion := b.MustStatus().Version
	dp := b.MustStatus().DataplaneProcess
	if dp == nil || dp.State != api.DataplaneProcessUp || dp.PID == 0 || dp.Mode != "auto" {
		t.Fatalf("%s's data-plane process: %+v, want one up, in mode auto", b.Host.Name, dp)
	}
	// It inherits nothing of the daemon's environment, which may hold
	// the mesh password.
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", dp.PID)); err != nil || len(env) != 0 {
		t.Errorf("the data-plane process's environment: %q (%v), want empty", env, err)
	}
	for _, kind := range []meshtest.RestartKind{meshtest.RestartSIGTERM, meshtest.RestartUpgrade, meshtest.RestartKill} {
		t.Run(string(kind), func(t *testing.T) {
			const count = 400 // 8 s at 20 ms
			pinger := meshtest.StartPing(t, pods[0], pods[1].IP, restartPingInterval, count)
			time.Sleep(2 * time.Second)
			bin := ""
			if kind == meshtest.RestartUpgrade {
				bin = upgrade
			}
			if _, err := meshtest.Restart(b, kind, bin); err != nil {
				t.Fatal(err)
			}
			res, err := pinger.Wait(time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s + launch of %s: %v", kind, b.Host.Name, res)
			if res.Sent < count*9/10 || res.Lost() > restartLostPings {
				t.Errorf("%s + launch: %v, want at most %d lost", kind, res, restartLostPings)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := meshtest.CheckNothingLeftBehind(ctx, b); err != nil {
				t.Error(err)
			}
			if now := b.MustStatus().DataplaneProcess; now == nil || now.PID != dp.PID || now.Restarts != 0 {
				t.Errorf("data-plane process after %s + launch: %+v, want the same one as before (PID %d), never restarted", kind, now, dp.PID)
			}
			if kind == meshtest.RestartUpgrade {
				if v := b.MustStatus().Version; v == oldVersion || v != "HEAD" {
					t.Errorf("after the upgrade %s runs version %q (was %q), want HEAD", b.Host.Name, v, oldVersion)
				}
			}
		})
	}
}

// TestRestartInProcessDataplane: with --dataplane-process=off the daemon
// runs wireguard-go itself, as the previous release did: no mesh-dataplane
// process exists, status shows none, and a SIGTERM restart stops traffic
// for at most restartLossBound (the new process's start-up; see
// docs/performance.md for the figure).
func TestRestartInProcessDataplane(t *testing.T) {
	_, nodes, pods := twoHostsWithPodsArgs(t, "rip", "--dataplane-process=off")
	b := nodes[1]
	if dp := b.MustStatus().DataplaneProcess; dp != nil {
		t.Fatalf("status with --dataplane-process=off shows a data-plane process: %+v", *dp)
	}
	const count = 400
	pinger := meshtest.StartPing(t, pods[0], pods[1].IP, restartPingInterval, count)
	time.Sleep(2 * time.Second)
	if _, err := meshtest.Restart(b, meshtest.RestartSIGTERM, ""); err != nil {
		t.Fatal(err)
	}
	res, err := pinger.Wait(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sigterm + launch of %s, wireguard-go in the daemon: %v", b.Host.Name, res)
	if res.Sent < count*9/10 || res.LongestGap > restartLossBound {
		t.Errorf("sigterm + launch: %v, want a gap of at most %v", res, restartLossBound)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := meshtest.CheckNothingLeftBehind(ctx, b); err != nil {
		t.Error(err)
	}
}

// dataplaneCrashBound bounds how long pod traffic stops when the
// data-plane process itself dies: the daemon's check (every second, at
// once for a process it started), the start of a new process, its
// configuration and a handshake. Generous for a loaded machine.
const dataplaneCrashBound = 10 * time.Second

// TestDataplaneProcessCrash: when the mesh-dataplane process (not the
// daemon) goes, pod traffic stops for at most dataplaneCrashBound: the
// daemon notices, starts a new process and configures it; status shows it
// up under a new PID with one more restart, and nothing else is left
// behind. The process goes by kill -9, by kill -9 after a restart of the
// daemon (a process it did not start itself, so no exit of its child
// tells it), by SIGTERM (how an operator moves it to a new build), by the
// removal of its UAPI socket and by the deletion of its TUN device (it
// exits on either).
func TestDataplaneProcessCrash(t *testing.T) {
	_, nodes, pods := twoHostsWithPods(t, "dpc")
	b := nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tests := []struct {
		name         string
		restartFirst bool
		stop         func(pid int) error
	}{
		{name: "kill -9", stop: func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }},
		{name: "kill -9 after a daemon restart", restartFirst: true, stop: func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }},
		{name: "SIGTERM", stop: func(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }},
		{name: "socket removed", stop: func(int) error {
			out, err := b.Host.Run(ctx, "rm", "/var/run/wireguard/mesh-wg.sock")
			if err != nil {
				return fmt.Errorf("rm: %v: %s", err, out)
			}
			return nil
		}},
		// Its routes go with the device: the daemon makes them again.
		{name: "TUN device deleted", stop: func(int) error {
			out, err := b.Host.Run(ctx, "ip", "link", "del", "mesh-wg")
			if err != nil {
				return fmt.Errorf("ip link del: %v: %s", err, out)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.restartFirst {
				if _, err := meshtest.Restart(b, meshtest.RestartSIGTERM, ""); err != nil {
					t.Fatal(err)
				}
			}
			before := b.MustStatus().DataplaneProcess
			if before == nil || before.State != api.DataplaneProcessUp || before.PID == 0 {
				t.Fatalf("%s's data-plane process: %+v, want one up", b.Host.Name, before)
			}
			const count = 600 // 12 s at 20 ms
			pinger := meshtest.StartPing(t, pods[0], pods[1].IP, restartPingInterval, count)
			time.Sleep(2 * time.Second)
			stopped := time.Now()
			if err := tt.stop(before.PID); err != nil {
				t.Fatalf("%s of %d: %v", tt.name, before.PID, err)
			}
			res, err := pinger.Wait(time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s of the data-plane process: %v; first reply %v after it", tt.name, res, res.FirstReplyAfter(stopped))
			if res.Sent < count*9/10 || res.LongestGap > dataplaneCrashBound {
				t.Errorf("%s of the data-plane process: %v, want a gap of at most %v", tt.name, res, dataplaneCrashBound)
			}
			after := b.MustStatus().DataplaneProcess
			if after == nil || after.State != api.DataplaneProcessUp || after.PID == before.PID || after.Restarts != before.Restarts+1 {
				t.Errorf("data-plane process after %s of %d (%+v): %+v, want a new one up and one more restart", tt.name, before.PID, *before, after)
			}
			if err := meshtest.CheckNothingLeftBehind(ctx, b); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestRestartUnderLoad: an iperf3 TCP stream between pods on two hosts
// survives a SIGTERM restart of the receiver's daemon (iperf3 finishes
// without error) and its throughput recovers (the last seconds carry
// data).
func TestRestartUnderLoad(t *testing.T) {
	testnet.RequireCommand(t, "iperf3")
	_, nodes, pods := twoHostsWithPods(t, "rld")
	b := nodes[1]
	server := pods[1].Host.Start(t, "ip", []string{"netns", "exec", pods[1].Name, "iperf3", "-s", "-1"}, nil)
	time.Sleep(500 * time.Millisecond) // the server's listen
	const secs = 10
	client := pods[0].Host.Start(t, "ip", []string{"netns", "exec", pods[0].Name, "iperf3", "-c", pods[1].IP.String(),
		"-t", fmt.Sprint(secs), "-J"}, nil)
	time.Sleep(3 * time.Second)
	if _, err := meshtest.Restart(b, meshtest.RestartSIGTERM, ""); err != nil {
		t.Fatal(err)
	}
	if err := client.Wait(time.Minute); err != nil {
		t.Fatalf("iperf3 did not survive the restart: %v\n%s", err, client.Log())
	}
	_ = server.Wait(10 * time.Second)
	var res struct {
		Intervals []struct {
			Sum struct {
				Start         float64 `json:"start"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum"`
		} `json:"intervals"`
	}
	if err := json.Unmarshal([]byte(client.Log()), &res); err != nil {
		t.Fatalf("iperf3 JSON: %v\n%s", err, client.Log())
	}
	var rates []string
	for _, iv := range res.Intervals {
		rates = append(rates, fmt.Sprintf("%.0f", iv.Sum.BitsPerSecond/1e6))
	}
	t.Logf("iperf3 Mbit/s per second across a SIGTERM restart at 3 s: %v", rates)
	if n := len(res.Intervals); n < secs-1 {
		t.Fatalf("iperf3 reported %d intervals, want %d", n, secs)
	}
	for _, iv := range res.Intervals[len(res.Intervals)-2:] {
		if iv.Sum.BitsPerSecond <= 0 {
			t.Errorf("no throughput %.0f s into the stream, after the restart: %v Mbit/s", iv.Sum.Start, rates)
		}
	}
}

// TestRestartForwardsBeforeGossip: a daemon restarted while its gossip
// cannot reach anyone forwards pod traffic from the peers, endpoints and
// ranges it persisted, and the other node keeps its WireGuard peer
// although it sees the node dead: a view that is only empty because gossip
// has not rejoined removes nothing.
func TestRestartForwardsBeforeGossip(t *testing.T) {
	_, nodes, pods := twoHostsWithPods(t, "rfg")
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	// Gossip (TCP and UDP 6783) between the hosts is dropped on B; the
	// data plane (UDP 6784) is not.
	for _, cmd := range []string{
		"add table inet rfgblock",
		"add chain inet rfgblock in { type filter hook input priority 0 ; }",
		"add rule inet rfgblock in meta l4proto { tcp, udp } th dport 6783 drop",
		"add rule inet rfgblock in meta l4proto { tcp, udp } th sport 6783 drop",
	} {
		if out, err := b.Host.Run(ctx, "nft", cmd); err != nil {
			t.Fatalf("nft %s: %v\n%s", cmd, err, out)
		}
	}
	b.Start()
	st := b.MustStatus()
	for _, p := range st.Peers {
		if !p.Self && p.State.Live() {
			t.Fatalf("%s sees %s %s through blocked gossip", b.Host.Name, p.Name, p.State)
		}
	}
	if out, err := pods[0].Host.Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "3", "-i", "0.2", "-W", "2", pods[1].IP.String()); err != nil {
		t.Fatalf("pod on %s cannot reach the pod on %s restarted without gossip: %v\n%s", a.Host.Name, b.Host.Name, err, out)
	}
	st = b.MustStatus()
	if len(st.Connections) != 1 || st.Connections[0].Peer != a.Host.Name {
		t.Errorf("%s's connections without gossip: %+v, want one to %s", b.Host.Name, st.Connections, a.Host.Name)
	}
	// A gives up on B's gossip (suspect, then dead) but keeps its peer
	// for peer.Grace.
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		states, err := peerStates(a)
		if err != nil {
			return err
		}
		if states[b.Host.Name] != string(api.MemberDead) {
			return &stateErr{b.Host.Name, states[b.Host.Name]}
		}
		return nil
	})
	if out, err := pods[0].Host.Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "3", "-i", "0.2", "-W", "2", pods[1].IP.String()); err != nil {
		t.Fatalf("the pods cannot reach each other while %s sees %s dead, within the grace: %v\n%s", a.Host.Name, b.Host.Name, err, out)
	}
	if out, err := b.Host.Run(ctx, "nft", "delete", "table", "inet", "rfgblock"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)
	waitConnected(t, nodes)
}

type stateErr struct{ name, state string }

func (e *stateErr) Error() string { return e.name + " is " + e.state + ", want dead" }

// TestSIGTERMIsNoLeaveMeshLeaveIs: SIGTERM stops a daemon without leaving:
// the others see it suspect or dead, never left, and keep its WireGuard
// peer. `mesh leave` leaves: the others see it left and drop its peer at
// once, the daemon exits 0, and its remembered peers are gone.
func TestSIGTERMIsNoLeaveMeshLeaveIs(t *testing.T) {
	_, nodes, _ := twoHostsWithPods(t, "lve")
	a, b := nodes[0], nodes[1]
	if err := b.Proc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		states, err := peerStates(a)
		if err != nil {
			return err
		}
		if s := states[b.Host.Name]; s != string(api.MemberSuspect) && s != string(api.MemberDead) {
			return &stateErr{b.Host.Name, s}
		}
		return nil
	})
	if s, _ := peerStates(a); s[b.Host.Name] == string(api.MemberLeft) {
		t.Fatalf("%s shows %s left after SIGTERM", a.Host.Name, b.Host.Name)
	}
	if c := a.MustStatus().Connections; len(c) != 1 || c[0].Peer != b.Host.Name || c[0].State != api.ConnEstablished {
		t.Fatalf("%s dropped %s's WireGuard peer after its SIGTERM, or shows it not established: %+v", a.Host.Name, b.Host.Name, c)
	}
	if _, err := os.Stat(b.Host.Path("/var/lib/mesh/dataplane-peers.json")); err != nil {
		t.Fatalf("no remembered peers after SIGTERM: %v", err)
	}
	if pids, err := meshtest.DataplaneProcesses(b.Host); err != nil || len(pids) != 1 {
		t.Fatalf("mesh-dataplane processes after SIGTERM of the daemon: %v (%v), want the one that keeps forwarding", pids, err)
	}
	b.Start()
	waitConnected(t, nodes)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := b.Host.Run(ctx, b.Bin, "leave"); err != nil {
		t.Fatalf("mesh leave: %v\n%s", err, out)
	}
	if err := b.Proc.Wait(10 * time.Second); err != nil {
		t.Fatalf("the daemon after mesh leave: %v", err)
	}
	expectStates(t, detectTimeout, nodes[:1], map[string]string{b.Host.Name: "left"}, false)
	testnet.Eventually(t, 15*time.Second, 250*time.Millisecond, func() error {
		if c := a.MustStatus().Connections; len(c) != 0 {
			return &stateErr{b.Host.Name, "still a connection"}
		}
		return nil
	})
	if _, err := os.Stat(b.Host.Path("/var/lib/mesh/dataplane-peers.json")); !os.IsNotExist(err) {
		t.Errorf("remembered peers left after mesh leave: %v", err)
	}
	if _, err := os.Stat(b.Host.Path(api.DefaultSocket)); !os.IsNotExist(err) {
		t.Errorf("socket left after mesh leave: %v", err)
	}
	// A node that left forwards nothing and leaves no process behind.
	if pids, err := meshtest.DataplaneProcesses(b.Host); err != nil || len(pids) != 0 {
		t.Errorf("mesh-dataplane processes after mesh leave: %v (%v), want none", pids, err)
	}
	if out, err := b.Host.Run(ctx, "ip", "-o", "link", "show", "mesh-wg"); err == nil {
		t.Errorf("the WireGuard device is left after mesh leave: %s", out)
	}
}

// uapiPeers counts the WireGuard peers of h's device mesh-wg, asked
// through its UAPI socket as `wg show` would.
func uapiPeers(h *testnet.Host) (int, error) {
	entries, err := uapiEntries(h)
	return len(entries), err
}

// TestExternalDataplaneProcess: with --dataplane-process=external a
// supervisor (here the test) runs mesh-dataplane and the daemon never
// starts one. The daemon configures it; a SIGTERM restart of the daemon
// loses at most restartLostPings; when the process dies, status shows it
// down and the daemon starts none, and once the supervisor has started a
// new one the daemon configures it (traffic back within
// dataplaneCrashBound, one restart counted); `mesh leave` removes its
// peers and leaves the process to its supervisor.
func TestExternalDataplaneProcess(t *testing.T) {
	testnet.RequireRoot(t)
	tn := testnet.New(t, testnet.Options{Hosts: 2, Prefix: "dpx"})
	hosts := tn.Hosts()
	dpBin := filepath.Join(filepath.Dir(meshtest.BuildMesh(t)), "mesh-dataplane")
	supervise := func(h *testnet.Host) *testnet.Proc {
		return h.Start(t, dpBin, []string{"--idle-with-kernel", "--log-level", "debug"}, nil)
	}
	dps := []*testnet.Proc{supervise(hosts[0]), supervise(hosts[1])}
	nodes := []*node{
		launch(t, hosts[0], nil, append(meshtest.KeyFileArgs(t, hosts[0]), "--dataplane-process=external")...),
		launch(t, hosts[1], hosts[:1], append(meshtest.KeyFileArgs(t, hosts[1]), "--dataplane-process=external")...),
	}
	dumpLogsOnFailure(t, nodes...)
	waitConnected(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var pods []*meshtest.Pod
	for i, n := range nodes {
		waitCNIInstalled(t, n)
		p, err := meshtest.AddPod(ctx, t, n.Host, []string{"xa", "xb"}[i])
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		_, err := hosts[0].Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "1", "-W", "2", pods[1].IP.String())
		return err
	})
	b := nodes[1]
	st := b.MustStatus().DataplaneProcess
	if st == nil || st.Mode != "external" || st.State != api.DataplaneProcessUp || st.PID != dps[1].PID() {
		t.Fatalf("%s's data-plane process: %+v, want the supervisor's (PID %d) up in mode external", b.Host.Name, st, dps[1].PID())
	}

	const count = 400
	pinger := meshtest.StartPing(t, pods[0], pods[1].IP, restartPingInterval, count)
	time.Sleep(2 * time.Second)
	if _, err := meshtest.Restart(b, meshtest.RestartSIGTERM, ""); err != nil {
		t.Fatal(err)
	}
	res, err := pinger.Wait(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sigterm + launch of %s, external data plane: %v", b.Host.Name, res)
	if res.Sent < count*9/10 || res.Lost() > restartLostPings {
		t.Errorf("sigterm + launch: %v, want at most %d lost", res, restartLostPings)
	}

	// The supervisor's process dies; the daemon waits for the next one.
	if err := dps[1].Kill(); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		if st := b.MustStatus().DataplaneProcess; st == nil || st.State != api.DataplaneProcessDown {
			return fmt.Errorf("data-plane process after its kill: %+v, want down", st)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	if pids, err := meshtest.DataplaneProcesses(b.Host); err != nil || len(pids) != 0 {
		t.Fatalf("mesh-dataplane processes while the supervisor's is dead: %v (%v); the daemon must start none", pids, err)
	}
	restarted := time.Now()
	dps[1] = supervise(b.Host)
	if err := testnet.Poll(dataplaneCrashBound, 20*time.Millisecond, func() error {
		_, err := hosts[0].Run(ctx, "ip", "netns", "exec", pods[0].Name, "ping", "-c", "1", "-W", "1", pods[1].IP.String())
		return err
	}); err != nil {
		t.Fatalf("no traffic within %v of the supervisor's new data-plane process: %v", dataplaneCrashBound, err)
	}
	t.Logf("traffic back %v after the supervisor started a new data-plane process", time.Since(restarted).Round(time.Millisecond))
	if st := b.MustStatus().DataplaneProcess; st == nil || st.State != api.DataplaneProcessUp || st.PID != dps[1].PID() || st.Restarts != 1 {
		t.Errorf("data-plane process after the supervisor's restart: %+v, want PID %d up, 1 restart", st, dps[1].PID())
	}

	if out, err := b.Host.Run(ctx, b.Bin, "leave"); err != nil {
		t.Fatalf("mesh leave: %v\n%s", err, out)
	}
	if err := b.Proc.Wait(10 * time.Second); err != nil {
		t.Fatalf("the daemon after mesh leave: %v", err)
	}
	if dps[1].Exited() {
		t.Errorf("mesh leave stopped the supervisor's data-plane process:\n%s", dps[1].Log())
	}
	if n, err := uapiPeers(b.Host); err != nil || n != 0 {
		t.Errorf("WireGuard peers of %s after mesh leave: %d (%v), want none", b.Host.Name, n, err)
	}
}
