package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// previousRelease is the last commit before mesh keys moved to Argon2id
// and key files: its nodes derive their keys from the password with one
// HKDF pass (now the legacy key).
const previousRelease = "d2d71ed"

// signedStatesLog is what a daemon logs when it moves to IPAM states with
// signed peer infos (ipam.Allocator.sendSignedLocked).
const signedStatesLog = "every member reads signed peer infos"

// TestUpgradeFromPreviousReleaseNodeByNode runs a 3-host mesh of the
// previous release and upgrades it as docs/architecture.md says: each node
// restarted with the new binary, the same password, a mesh name and
// --accept-legacy-key; then each restarted without --accept-legacy-key.
// After every step every node reaches every other's overlay address, and
// at the end the legacy key is gone and a previous-release host is kept
// out. While a node of the previous release is left, `mesh status ipam`
// on the upgraded nodes says they send no signed IPAM states yet, naming
// the nodes left; once every node runs the new binary it says they do.
func TestUpgradeFromPreviousReleaseNodeByNode(t *testing.T) {
	testnet.RequireRoot(t)
	oldBin := filepath.Join(testnet.BuildMakeRevision(t, previousRelease), "mesh")
	newBin := meshtest.BuildMesh(t)
	net := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "upg"})
	hosts := net.Hosts()
	oldEnv := []string{"MESH_PASSWORD=" + meshtest.Password}
	var nodes []*node
	for i, h := range hosts {
		args := []string{"launch", "--name", h.Name, "--advertise-addr", h.Addr.String(), "--log-level", "debug"}
		if i > 0 {
			args = append(args, hosts[0].Addr.String())
		}
		n := &node{T: t, Host: h, Bin: oldBin, Args: args, Env: oldEnv}
		n.Start()
		nodes = append(nodes, n)
	}
	dumpLogsOnFailure(t, nodes...)
	waitConnected(t, nodes)
	if st := nodes[0].MustStatus(); len(st.KeyIDs) != 0 {
		t.Fatalf("the previous release reports key IDs %v: is it really the previous release?", st.KeyIDs)
	}

	pw, err := crypto.PasswordKey([]byte(meshtest.Password), meshtest.MeshName)
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := crypto.LegacyPasswordKey([]byte(meshtest.Password))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pings := pingRing(t, ctx, nodes)

	restart := func(n *node, bin string, extra ...string) {
		t.Helper()
		if err := n.Proc.Stop(15 * time.Second); err != nil {
			t.Fatal(err)
		}
		n.Bin, n.Env = bin, meshtest.Env()
		n.Args = slices.DeleteFunc(n.Args, func(a string) bool { return a == "--accept-legacy-key" })
		n.Args = append(slices.Clone(n.Args[:1]), append(extra, n.Args[1:]...)...)
		n.Start()
		testnet.Eventually(t, 90*time.Second, 500*time.Millisecond, func() error { return meshtest.Ready(nodes) })
		// Ready counts handshakes of the last 3 minutes, which the
		// restarted node's predecessor made: the first node moved from
		// the previous release (wireguard-go in the daemon) to a
		// mesh-dataplane process needs that process's first handshakes
		// before its overlay answers, so the pings get a bounded wait.
		if err := testnet.Poll(30*time.Second, 500*time.Millisecond, func() error { return pingAll(t, nodes) }); err != nil {
			t.Fatalf("after restarting %s: %v", n.Host.Name, err)
		}
	}
	// Step 1: node by node, the new binary accepting the legacy key. While
	// any node of the previous release is there, gossip stays on the
	// legacy key.
	for i, n := range nodes {
		restart(n, newBin, "--accept-legacy-key")
		if i < len(nodes)-1 {
			if st := n.MustStatus(); st.GossipKeyID != legacy.ID() {
				t.Fatalf("%s encrypts gossip with %s while previous-release nodes remain, want the legacy key %s", n.Host.Name, st.GossipKeyID, legacy.ID())
			}
			// IPAM states stay readable by the previous release: no
			// signatures while it is there (docs/ipam.md, "Signed peer
			// infos").
			for _, u := range nodes[:i+1] {
				if strings.Contains(u.Proc.Log(), signedStatesLog) {
					t.Fatalf("%s sends signed IPAM states while previous-release nodes remain", u.Host.Name)
				}
				// Nor deltas, which the previous release drops unread.
				if ip := u.MustStatus().IPAM; ip == nil || ip.Deltas || strings.Contains(u.Proc.Log(), deltaSentLog) {
					t.Fatalf("%s announces IPAM ring changes by deltas while previous-release nodes remain", u.Host.Name)
				}
			}
			// Status says so, naming the nodes of the previous release
			// left (the ones restarted are back with the new binary).
			var want []api.SignedStatesHolder
			line := "not yet (waiting for "
			for j, o := range nodes[i+1:] {
				want = append(want, api.SignedStatesHolder{Name: o.Host.Name, State: api.MemberAlive, Reason: api.HolderPreviousRelease})
				if j > 0 {
					line += "; "
				}
				line += o.Host.Name + ": " + api.HolderPreviousRelease
			}
			line += ")"
			for _, u := range nodes[:i+1] {
				testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
					return signedStatesAre(u, false, want, line)
				})
				t.Logf("%s: Signed: %s", u.Host.Name, line)
			}
		}
	}
	// Every node runs the new binary: each moves to signed IPAM states.
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		for _, n := range nodes {
			if !strings.Contains(n.Proc.Log(), signedStatesLog) {
				return fmt.Errorf("%s does not send signed IPAM states yet", n.Host.Name)
			}
		}
		return nil
	})
	for _, n := range nodes {
		testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
			if err := signedStatesAre(n, true, nil, "yes"); err != nil {
				return err
			}
			if ip := n.MustStatus().IPAM; ip == nil || !ip.Deltas {
				return fmt.Errorf("%s does not announce ring changes by deltas though every member reads them", n.Host.Name)
			}
			return nil
		})
	}
	waitKeys(t, nodes, []string{pw.ID(), legacy.ID()}, pw.ID())
	// Step 2: node by node, without the legacy key.
	for _, n := range nodes {
		restart(n, newBin)
	}
	waitKeys(t, nodes, []string{pw.ID()}, pw.ID())
	// No honest info was refused for its signature on the way, and the
	// switch survived the restarts (it is recorded in the state file).
	for _, n := range nodes {
		if err := signedStatesAre(n, true, nil, "yes"); err != nil {
			t.Errorf("after the restarts without the legacy key: %v", err)
		}
		for _, p := range n.MustStatus().IPAM.Problems {
			for _, r := range []string{"unsigned-info", "bad-info-signature", "unknown-signer"} {
				if strings.Contains(p, "("+r+")") {
					t.Errorf("%s refused honest IPAM input during the upgrade: %q", n.Host.Name, p)
				}
			}
		}
	}
	lost, sent := stopPings(t, pings)
	t.Logf("upgrade with 6 daemon restarts: %v lost in total over %d probes on 3 pairs (every %v; userspace WireGuard stops while its daemon restarts)", lost, sent, pingInterval)

	// A node of the previous release is kept out now.
	late := net.AddHost(t)
	lateNode := &node{T: t, Host: late, Bin: oldBin, Env: oldEnv,
		Args: []string{"launch", "--name", late.Name, "--advertise-addr", late.Addr.String(), hosts[0].Addr.String()}}
	lateNode.Start()
	dumpLogsOnFailure(t, lateNode)
	testnet.Eventually(t, 30*time.Second, 250*time.Millisecond, func() error {
		st, err := lateNode.Status()
		if err != nil {
			return err
		}
		if len(st.Targets) != 1 || st.Targets[0].State != "failed" {
			return fmt.Errorf("previous-release host's targets: %+v", st.Targets)
		}
		return nil
	})
	for _, n := range nodes {
		for _, p := range n.MustStatus().Peers {
			if p.Name == late.Name {
				t.Fatalf("%s sees the previous-release host as %s", n.Host.Name, p.State)
			}
		}
		assertNoSecret(t, "the log of "+n.Host.Name, n.Proc.Log())
		if strings.Contains(n.Proc.Log(), meshtest.Password) {
			t.Fatalf("password in the log of %s", n.Host.Name)
		}
	}
}

// signedStatesAre checks what `mesh status ipam` on n says of the switch to
// signed IPAM states, in JSON (sending, and the members it waits for) and
// on the Signed line of the text; a member that cannot read signed states
// must not be named among the problems.
func signedStatesAre(n *node, sending bool, waitingFor []api.SignedStatesHolder, line string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Host.Run(ctx, n.Bin, "status", "ipam", "-o", "json")
	if err != nil {
		return err
	}
	var st api.IPAM
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return fmt.Errorf("bad `mesh status ipam -o json` on %s: %q: %w", n.Host.Name, out, err)
	}
	s := st.SignedStates
	if s == nil || s.Sending != sending || !slices.Equal(s.WaitingFor, waitingFor) {
		return fmt.Errorf("%s: signedStates %+v, want sending %v waiting for %+v", n.Host.Name, s, sending, waitingFor)
	}
	for _, p := range st.Problems {
		if strings.Contains(p, "signed IPAM states") {
			return fmt.Errorf("%s names a problem no member has: %q", n.Host.Name, p)
		}
	}
	text, err := n.Host.Run(ctx, n.Bin, "status", "ipam")
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(strings.Split(text, "\n"), func(l string) bool {
		return strings.HasPrefix(l, "Signed:") && strings.TrimSpace(strings.TrimPrefix(l, "Signed:")) == line
	}) {
		return fmt.Errorf("%s: `mesh status ipam` has no line \"Signed: %s\":\n%s", n.Host.Name, line, text)
	}
	return nil
}
