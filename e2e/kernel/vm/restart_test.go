//go:build kernelvm

package kernelvm

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// pingLoss matches iputils ping's summary line.
var pingLoss = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// TestKernelCrashRestartKeepsForwarding: the kernel forwards on its own, so
// while the daemon of a kernel node is down (SIGKILL, as a crash or an
// upgrade that does not say goodbye) and while the new daemon adopts the
// link, pod traffic through it loses no packet. The same for SIGTERM,
// which is a restart and no leave: the other node keeps the peer.
func TestKernelCrashRestartKeepsForwarding(t *testing.T) {
	net := testnet.New(t, testnet.Options{Hosts: 2, Prefix: "kr"})
	hosts := net.Hosts()
	a := launch(t, hosts[0], nil, "--dataplane", "kernel")
	b := launch(t, hosts[1], hosts[:1], "--dataplane", "kernel")
	nodes := []*meshtest.Node{a, b}
	meshtest.DumpLogsOnFailure(t, nodes...)
	testnet.Eventually(t, readyTimeout, time.Second, func() error { return meshtest.Ready(nodes) })
	for _, n := range nodes {
		meshtest.WaitCNIInstalled(t, n)
	}
	pa := addPod(t, a.Host, "pa")
	pb := addPod(t, b.Host, "pb")
	if err := pa.ping(pb.ip, 0); err != nil {
		t.Fatal(err)
	}

	// restart stops b's daemon with stop, starts it again while pa pings
	// pb through both kernels, and returns how many pings were lost.
	restart := func(stop func() error) (sent, lost int) {
		t.Helper()
		// 15 s of pings; -W 5 counts a reply that is merely late (a
		// loaded emulator) as received, so only a drop is a loss.
		const count, interval = 150, 0.1
		pinger := a.Host.Start(t, "ip", []string{"netns", "exec", pa.name, "ping", "-c", strconv.Itoa(count),
			"-i", fmt.Sprint(interval), "-W", "5", pb.ip.String()}, nil)
		time.Sleep(2 * time.Second)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if k := linkKind(t, b.Host, "mesh-wg"); k != "wireguard" {
			t.Fatalf("the kernel link is %q while the daemon is down", k)
		}
		b.Start()
		testnet.Eventually(t, readyTimeout, time.Second, func() error { return meshtest.Ready(nodes) })
		_ = pinger.Wait(time.Minute) // non-zero when packets were lost
		m := pingLoss.FindStringSubmatch(pinger.Log())
		if m == nil {
			t.Fatalf("no ping summary:\n%s", pinger.Log())
		}
		s, _ := strconv.Atoi(m[1])
		r, _ := strconv.Atoi(m[2])
		return s, s - r
	}

	sent, lost := restart(b.Proc.Kill)
	t.Logf("SIGKILL and restart of a kernel node's daemon: %d of %d pings lost", lost, sent)
	if sent < 100 || lost != 0 {
		t.Fatalf("SIGKILL and restart of a kernel node's daemon: %d of %d pings lost, want none", lost, sent)
	}
	// SIGTERM is a restart, not a leave: the other node keeps the peer.
	sent, lost = restart(func() error { return b.Proc.Stop(30 * time.Second) })
	t.Logf("SIGTERM and restart of a kernel node's daemon: %d of %d pings lost", lost, sent)
	if sent < 100 || lost != 0 {
		t.Fatalf("SIGTERM and restart of a kernel node's daemon: %d of %d pings lost, want none", lost, sent)
	}
}
