package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// beforeDigests is the last commit before push/pull digests of the IPAM
// state (docs/ipam.md, "Digests at rest"): its nodes read deltas
// (metadata dl 1) but would refuse a digest as a corrupt state.
const beforeDigests = "88916b9"

// digestLog is what a node logs (at debug) when it handles a push/pull
// digest, whether its own state is the same or not.
const digestLog = "push/pull digest"

// TestDigestsUpgradeFromPreviousCommit: a node of the commit before
// digests in a mesh of this release holds them off everywhere (no node
// sends one, it refuses no state as corrupt, status says whole states),
// and the IPAM works across the mixed mesh; once it is upgraded too,
// every node says digests are on and push/pull carries them.
func TestDigestsUpgradeFromPreviousCommit(t *testing.T) {
	testnet.RequireRoot(t)
	nodes, newBin := startMixedMesh(t, beforeDigests, "dgs", "--log-level", "debug")
	if _, err := allocateMany(nodes[0], "old", 3, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		if _, err := allocateMany(n, "new-"+n.Host.Name, 3, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// Past two push/pull intervals (15 s), so that every pair has
	// exchanged states at least once.
	time.Sleep(35 * time.Second)
	for _, n := range nodes[1:] {
		if ip := n.MustStatus().IPAM; ip == nil || ip.Digests || !ip.Deltas {
			t.Fatalf("%s: digests on (or deltas off) beside a node of the previous commit: %+v", n.Host.Name, ip)
		}
		if strings.Contains(n.Proc.Log(), digestLog) {
			t.Fatalf("%s handled a push/pull digest in a mesh with a node of the previous commit", n.Host.Name)
		}
	}
	oldCommitRefusedNothing(t, nodes)

	// Upgrade it: digests come on everywhere, and push/pull carries them.
	upgradeFirst(t, nodes, newBin)
	eventuallyEveryIPAM(t, nodes, "has digests on", func(ip *api.IPAM) bool { return ip.Digests })
	// memberlist runs a push/pull every 15 s per node: within a minute
	// some node has handled a digest.
	testnet.Eventually(t, 60*time.Second, time.Second, func() error {
		for _, n := range nodes {
			if strings.Contains(n.Proc.Log(), digestLog) {
				return nil
			}
		}
		return fmt.Errorf("no node handled a push/pull digest yet")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := nodes[0].Client().Allocate(ctx, "after-upgrade", "eth0"); err != nil {
		t.Fatal(err)
	}
	assertUnique(t, nodes)
	for _, n := range nodes {
		if ip := n.MustStatus().IPAM; ip == nil || strings.Contains(strings.Join(ip.Problems, "\n"), "(corrupt)") {
			t.Fatalf("%s refused IPAM input as corrupt: %+v", n.Host.Name, ip)
		}
	}
}

// startMixedMesh starts three hosts of prefix, the first with the mesh of
// commit rev and the others with make build's, each launched with args,
// and waits until they are connected. It returns the nodes and the new
// binary.
func startMixedMesh(t *testing.T, rev, prefix string, args ...string) ([]*node, string) {
	t.Helper()
	testnet.RequireRoot(t)
	oldBin := filepath.Join(testnet.BuildMakeRevision(t, rev), "mesh")
	newBin := meshtest.BuildMesh(t)
	net := testnet.New(t, testnet.Options{Hosts: 3, Prefix: prefix})
	hosts := net.Hosts()
	var nodes []*node
	for i, h := range hosts {
		a := append([]string{"launch", "--name", h.Name, "--advertise-addr", h.Addr.String()}, args...)
		if i > 0 {
			a = append(a, hosts[0].Addr.String())
		}
		// The node of the previous commit first, so that no two nodes
		// of this release are ever alone together.
		bin := newBin
		if i == 0 {
			bin = oldBin
		}
		n := &node{T: t, Host: h, Bin: bin, Args: a, Env: meshtest.Env()}
		n.Start()
		nodes = append(nodes, n)
	}
	dumpLogsOnFailure(t, nodes...)
	waitConnected(t, nodes)
	return nodes, newBin
}

// upgradeFirst restarts the first node with newBin and waits until the
// mesh is connected again.
func upgradeFirst(t *testing.T, nodes []*node, newBin string) {
	t.Helper()
	if err := nodes[0].Proc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	nodes[0].Bin = newBin
	nodes[0].Start()
	waitConnected(t, nodes)
}

// oldCommitRefusedNothing fails t if the first node (of the previous
// commit) refused IPAM input as corrupt, or an address is held twice.
func oldCommitRefusedNothing(t *testing.T, nodes []*node) {
	t.Helper()
	if ip := nodes[0].MustStatus().IPAM; ip == nil || strings.Contains(strings.Join(ip.Problems, "\n"), "(corrupt)") {
		t.Fatalf("the node of the previous commit refused IPAM input as corrupt: %+v", ip)
	}
	assertUnique(t, nodes)
}

// honestRefusedNothing fails t for each IPAM input a node refused (named
// among its IPAM problems): in a mesh of honest nodes there is none.
func honestRefusedNothing(t *testing.T, nodes []*node) {
	t.Helper()
	for _, n := range nodes {
		for _, p := range n.MustStatus().IPAM.Problems {
			if strings.Contains(p, "refused") {
				t.Errorf("%s refused honest IPAM input: %q", n.Host.Name, p)
			}
		}
	}
}

// eventuallyEveryIPAM waits up to a minute until ok holds of every node's
// IPAM status; what names it in the failure.
func eventuallyEveryIPAM(t *testing.T, nodes []*node, what string, ok func(*api.IPAM) bool) {
	t.Helper()
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		for _, n := range nodes {
			if ip := n.MustStatus().IPAM; ip == nil || !ok(ip) {
				return fmt.Errorf("%s: not yet: %s", n.Host.Name, what)
			}
		}
		return nil
	})
}
