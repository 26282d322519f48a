package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// beforeOwned is the last commit before peer infos listed the space their
// peer owns (docs/ipam.md, "Signed ring transfers"): its nodes read
// signed states and the Joining flag (metadata jn 1) but would take the
// list for the next field of an info and refuse the state.
const beforeOwned = "606274f"

// TestOwnedUpgradeFromPreviousCommit: a node of the commit before the
// owned-space lists in a mesh of this release holds them off (the others
// switch to signed states but list nothing, and the old node refuses no
// state as corrupt); once it is upgraded too, every node lists its space,
// and a donation between upgraded nodes, which the release rule checks on
// every receiver, goes through with no state refused.
func TestOwnedUpgradeFromPreviousCommit(t *testing.T) {
	// A /26: a node that places 30 pods must ask the others for space.
	nodes, newBin := startMixedMesh(t, beforeOwned, "own", "--ipalloc-range", "10.77.0.0/26")
	for _, n := range nodes {
		if _, err := allocateMany(n, "before-"+n.Host.Name, 2, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// The new nodes switch to signed states (the old commit reads them),
	// and some seconds later still list nothing.
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		for _, n := range nodes[1:] {
			if ip := n.MustStatus().IPAM; ip == nil || ip.SignedStates == nil || !ip.SignedStates.Sending {
				return fmt.Errorf("%s does not send signed states yet", n.Host.Name)
			}
		}
		return nil
	})
	time.Sleep(10 * time.Second)
	for _, n := range nodes[1:] {
		if ip := n.MustStatus().IPAM; ip.OwnedListed {
			t.Fatalf("%s lists its space beside a node of the previous commit", n.Host.Name)
		}
	}
	oldCommitRefusedNothing(t, nodes)

	// Upgrade it: every node lists its space.
	upgradeFirst(t, nodes, newBin)
	eventuallyEveryIPAM(t, nodes, "lists its space", func(ip *api.IPAM) bool { return ip.OwnedListed })
	before := nodes[1].MustStatus().IPAM.Ranges
	if _, err := allocateMany(nodes[0], "after", 30, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// Every node learns the donation, and none refused a state on the way.
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		first := nodes[0].MustStatus().IPAM.Ranges
		if slices.Equal(first, before) {
			return fmt.Errorf("no space moved to %s", nodes[0].Host.Name)
		}
		for _, n := range nodes[1:] {
			if got := n.MustStatus().IPAM.Ranges; !slices.Equal(got, first) {
				return fmt.Errorf("%s's ring %v, %s's %v", n.Host.Name, got, nodes[0].Host.Name, first)
			}
		}
		return nil
	})
	honestRefusedNothing(t, nodes)
	assertUnique(t, nodes)
}
