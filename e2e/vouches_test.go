package e2e

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// beforeVouches is the last commit before peer infos carried vouches
// (docs/ipam.md, "Vouched reclaims"): its nodes read the lists of
// acknowledgements (metadata jn 3) but would take the vouches for the
// next field of an info and refuse the state.
const beforeVouches = "2517b16"

// TestVouchesUpgradeFromPreviousCommit: with automatic reclaim on, a node
// of the commit before vouches is a member. The nodes of this release
// neither list vouches nor hold their space to them, and the old node
// refuses no state as corrupt. Once it is upgraded every node does both,
// allocations go on, and no IPAM input is refused on the way.
func TestVouchesUpgradeFromPreviousCommit(t *testing.T) {
	nodes, newBin := startMixedMesh(t, beforeVouches, "vch", "--ipalloc-reclaim-after", "10m")
	for _, n := range nodes {
		if _, err := allocateMany(n, "before-"+n.Host.Name, 2, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	eventuallyEveryIPAM(t, nodes[1:], "lists its acknowledgements", func(ip *api.IPAM) bool { return ip.TombstonesAcked })
	time.Sleep(10 * time.Second)
	for _, n := range nodes[1:] {
		if ip := n.MustStatus().IPAM; ip.ReclaimsVouched {
			t.Fatalf("%s lists vouches beside a node of the previous commit", n.Host.Name)
		}
	}
	oldCommitRefusedNothing(t, nodes)

	upgradeFirst(t, nodes, newBin)
	eventuallyEveryIPAM(t, nodes, "lists its vouches", func(ip *api.IPAM) bool { return ip.ReclaimsVouched })
	for _, n := range nodes {
		if _, err := allocateMany(n, "after-"+n.Host.Name, 2, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	honestRefusedNothing(t, nodes)
	assertUnique(t, nodes)
}
