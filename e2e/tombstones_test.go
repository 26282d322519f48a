package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// beforeAcks is the last commit before peer infos listed the tombstones
// their peer holds (docs/ipam.md, "Dropping tombstones"): its nodes read
// the owned-space lists (metadata jn 2) but would take the new list for
// the next field of an info and refuse the state.
const beforeAcks = "504db6d"

// TestTombstonesUpgradeFromPreviousCommit: a node is removed (rmpeer of a
// dead host) while a node of the commit before the acknowledgements is a
// member. Its tombstone stays, the nodes of this release list nothing
// and the old node refuses no state as corrupt. Once the old node is
// upgraded, every node lists its acknowledgements, and the tombstone is
// dropped everywhere, with no IPAM input refused on the way.
func TestTombstonesUpgradeFromPreviousCommit(t *testing.T) {
	nodes, newBin := startMixedMesh(t, beforeAcks, "tmb")
	for _, n := range nodes {
		if _, err := allocateMany(n, "before-"+n.Host.Name, 2, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	eventuallyEveryIPAM(t, nodes[1:], "sends signed states", func(ip *api.IPAM) bool { return ip.SignedStates != nil && ip.SignedStates.Sending })

	// The third host goes down for good and an operator removes it.
	gone := nodes[2]
	if err := gone.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	nodes = nodes[:2]
	expectStates(t, detectTimeout, nodes, map[string]string{gone.Host.Name: "dead"}, false)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	testnet.Eventually(t, 100*time.Second, 2*time.Second, func() error {
		out, err := nodes[1].Host.Run(ctx, nodes[1].Bin, "rmpeer", gone.Host.Name)
		if err != nil && !strings.Contains(out, "try again in") {
			t.Fatalf("rmpeer %s: %v\n%s", gone.Host.Name, err, out)
		}
		return err
	})
	eventuallyEveryIPAM(t, nodes, "holds the tombstone", func(ip *api.IPAM) bool { return ip.Tombstones == 1 })
	time.Sleep(10 * time.Second)
	if ip := nodes[1].MustStatus().IPAM; ip.TombstonesAcked || ip.Tombstones != 1 {
		t.Fatalf("beside a node of the previous commit: acknowledgements listed %v, %d tombstones", ip.TombstonesAcked, ip.Tombstones)
	}
	oldCommitRefusedNothing(t, nodes)

	// Upgrade it: every node lists what it holds, and the tombstone goes.
	upgradeFirst(t, nodes, newBin)
	eventuallyEveryIPAM(t, nodes, "lists its acknowledgements", func(ip *api.IPAM) bool { return ip.TombstonesAcked })
	testnet.Eventually(t, 4*time.Minute, 2*time.Second, func() error {
		for _, n := range nodes {
			if ip := n.MustStatus().IPAM; ip.Tombstones != 0 || ip.TombstonesDropped < 1 {
				return fmt.Errorf("%s: %d tombstones, %d dropped", n.Host.Name, ip.Tombstones, ip.TombstonesDropped)
			}
		}
		return nil
	})
	honestRefusedNothing(t, nodes)
	assertUnique(t, nodes)
}
