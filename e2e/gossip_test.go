package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// memberlist's LAN settings detect a dead node in a few seconds; the bound
// leaves room for a loaded CI machine.
const detectTimeout = 45 * time.Second

func startFive(t *testing.T) (*testnet.Net, []*node) {
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 5, Prefix: "gsp"})
	nodes := launchStar(t, net.Hosts())
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)
	return net, nodes
}

func TestFiveJoinWrongPasswordAndNoPassword(t *testing.T) {
	net, nodes := startFive(t)

	// A sixth host with the wrong password is seen by nobody and sees nobody.
	bad := net.AddHost(t)
	intruder := launchWithEnv(t, bad, net.Hosts()[:1], []string{"MESH_PASSWORD=not the password", "MESH_NAME=" + meshtest.MeshName})
	dumpLogsOnFailure(t, intruder)
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		st, err := intruder.Status()
		if err != nil {
			return err
		}
		if len(st.Targets) != 1 || st.Targets[0].State != "failed" {
			return fmt.Errorf("intruder's targets: %+v", st.Targets)
		}
		return nil
	})
	if !strings.Contains(intruder.Proc.Log(), "wrong mesh password?") {
		t.Fatalf("the intruder's log does not say why it cannot join:\n%s", intruder.Proc.Log())
	}
	if st := intruder.MustStatus(); len(st.Peers) != 1 {
		t.Fatalf("intruder sees %+v", st.Peers)
	}
	expectStates(t, 5*time.Second, nodes, allAlive(nodes), true)

	// A seventh without password and without --insecure refuses to start.
	lone := net.AddHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := lone.Run(ctx, meshBinary(t), "launch", "--name", lone.Name, lone.Addr.String())
	if err == nil || !strings.Contains(out, "no mesh password") {
		t.Fatalf("launch without password: err=%v, output:\n%s", err, out)
	}

	for _, n := range append(nodes, intruder) {
		assertNoSecret(t, "the log of "+n.Host.Name, n.Proc.Log())
		st, _ := n.Host.Run(ctx, n.Bin, "status", "-o", "json")
		assertNoSecret(t, "status", st)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.Proc.PID()))
		assertNoSecret(t, "the command line", string(cmdline))
	}
	// The control socket is root-only.
	out, err = nodes[0].Host.Run(ctx, "stat", "-c", "%a", "/run/mesh/mesh.sock")
	if err != nil || strings.TrimSpace(out) != "600" {
		t.Fatalf("socket mode: %q, %v", out, err)
	}
}

func TestKillRestartRejoinsAsSamePeer(t *testing.T) {
	_, nodes := startFive(t)
	victim := nodes[3]
	before := victim.MustStatus().PeerID
	if err := victim.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	others := append(append([]*node{}, nodes[:3]...), nodes[4])
	expectStates(t, detectTimeout, others, map[string]string{victim.Host.Name: "dead"}, false)

	victim.Start()
	if after := victim.MustStatus().PeerID; after != before {
		t.Fatalf("peer ID changed across restart: %s -> %s", before, after)
	}
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)
	for _, n := range others {
		for _, p := range n.MustStatus().Peers {
			if p.Name == victim.Host.Name && p.PeerID != before {
				t.Fatalf("%s sees %s with peer ID %s, want %s", n.Host.Name, p.Name, p.PeerID, before)
			}
		}
	}
}

func TestPartitionAndHeal(t *testing.T) {
	net, nodes := startFive(t)
	hosts := net.Hosts()
	left, right := hosts[:2], hosts[2:5]
	net.Partition(left, right)
	// Each side stops seeing the other as alive.
	notAlive := func(ns []*node, names []*testnet.Host) {
		testnet.Eventually(t, detectTimeout, 250*time.Millisecond, func() error {
			for _, n := range ns {
				got, err := peerStates(n)
				if err != nil {
					return err
				}
				for _, h := range names {
					if got[h.Name] == "alive" {
						return fmt.Errorf("%s still sees %s alive", n.Host.Name, h.Name)
					}
				}
			}
			return nil
		})
	}
	notAlive(nodes[:2], right)
	notAlive(nodes[2:], left)
	net.Heal()
	expectStates(t, 90*time.Second, nodes, allAlive(nodes), true)
}

func TestRestartRejoinsThroughRememberedPeer(t *testing.T) {
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "rem"})
	hosts := net.Hosts()
	a := launch(t, hosts[0], nil)
	b := launch(t, hosts[1], hosts[:1])
	c := launch(t, hosts[2], hosts[:1]) // c names only a
	nodes := []*node{a, b, c}
	dumpLogsOnFailure(t, nodes...)
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)

	// a, the only peer c was told of, goes away; c restarts and must find
	// b, which it only learned of through gossip.
	if err := a.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	c.Start()
	expectStates(t, detectTimeout, []*node{c}, map[string]string{b.Host.Name: "alive"}, false)
}

func TestConnectAndForget(t *testing.T) {
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 2, Prefix: "cf"})
	hosts := net.Hosts()
	a := launch(t, hosts[0], nil)
	b := launch(t, hosts[1], nil)
	dumpLogsOnFailure(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := b.Host.Run(ctx, b.Bin, "connect", hosts[0].Addr.String()); err != nil {
		t.Fatalf("connect: %v\n%s", err, out)
	}
	expectStates(t, detectTimeout, []*node{a, b}, allAlive([]*node{a, b}), true)
	st := b.MustStatus()
	if len(st.Targets) != 1 || st.Targets[0].Source != "connect" || st.Targets[0].State != "connected" {
		t.Fatalf("targets after connect: %+v", st.Targets)
	}
	if out, err := b.Host.Run(ctx, b.Bin, "forget", hosts[0].Addr.String()); err != nil {
		t.Fatalf("forget: %v\n%s", err, out)
	}
	if st := b.MustStatus(); len(st.Targets) != 0 {
		t.Fatalf("targets after forget: %+v", st.Targets)
	}
	out, err := b.Host.Run(ctx, b.Bin, "forget", "192.0.2.250")
	if err == nil || !strings.Contains(out, "neither a target nor a remembered peer") {
		t.Fatalf("forgetting an unknown peer: err=%v\n%s", err, out)
	}
	out, err = b.Host.Run(ctx, b.Bin, "connect", "host:99999")
	if err == nil || !strings.Contains(out, "99999") {
		t.Fatalf("connecting to a bad address: err=%v\n%s", err, out)
	}
}

// TestSIGTERMStopsPromptlyWhilePartitioned: a node cut off from a peer that
// it still lists still stops within the kubelet's grace on SIGTERM. Its
// goodbye to the unreachable peer and a join in flight would each block for
// memberlist's TCP timeout (10 s) if stopping waited for them.
func TestSIGTERMStopsPromptlyWhilePartitioned(t *testing.T) {
	net, nodes := startFive(t)
	hosts := net.Hosts()
	if err := net.Partition(hosts[:1], hosts[1:3]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := nodes[0].Proc.Stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	// SIGTERM is no leave (no goodbye, no leave broadcast), and the join
	// loop's wait is bounded by 2 s; the rest is margin for a loaded
	// machine, well under memberlist's 10 s TCP timeout stacked per
	// unreachable peer.
	if took := time.Since(start); took > 9*time.Second {
		t.Fatalf("SIGTERM took %v to stop a node cut off from two peers", took.Round(100*time.Millisecond))
	}
}
