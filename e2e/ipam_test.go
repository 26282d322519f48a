package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

func TestIPAMFiveHostsDisjointAndAgreed(t *testing.T) {
	_, nodes := startMesh(t, 5)
	cluster := netip.MustParsePrefix("10.32.0.0/12")
	var ring []api.RangeInfo
	owner := map[netip.Prefix]string{}
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		ring = nodes[0].MustStatus().IPAM.Ranges
		for _, n := range nodes[1:] {
			if got := n.MustStatus().IPAM.Ranges; !reflect.DeepEqual(got, ring) {
				return fmt.Errorf("%s's ring %v differs from %s's %v", n.Host.Name, got, nodes[0].Host.Name, ring)
			}
		}
		return nil
	})
	for _, n := range nodes {
		owned := n.MustStatus().IPAM.Owned
		if len(owned) == 0 {
			t.Fatalf("%s owns nothing", n.Host.Name)
		}
		for _, c := range owned {
			p := netip.MustParsePrefix(c)
			if !cluster.Contains(p.Addr()) || p.Bits() < cluster.Bits() {
				t.Fatalf("%s owns %s outside %s", n.Host.Name, p, cluster)
			}
			for q, by := range owner {
				if q.Overlaps(p) {
					t.Fatalf("%s and %s both own %s / %s", by, n.Host.Name, q, p)
				}
			}
			owner[p] = n.Host.Name
		}
	}
}

// allocateMany allocates count addresses on n, each bounded by per; it
// stops at the first failure and returns what it got.
func allocateMany(n *node, prefix string, count int, per time.Duration) ([]netip.Addr, error) {
	var got []netip.Addr
	for i := range count {
		ctx, cancel := context.WithTimeout(context.Background(), per)
		a, err := n.Client().Allocate(ctx, fmt.Sprintf("%s-%d", prefix, i), "eth0")
		cancel()
		if err != nil {
			return got, err
		}
		got = append(got, netip.MustParsePrefix(a.Address).Addr())
	}
	return got, nil
}

// assertUnique fails if any address is allocated on two nodes, from the
// nodes' own allocation lists (the ground truth a CNI plugin relies on).
func assertUnique(t *testing.T, nodes []*node) int {
	t.Helper()
	seen := map[string]string{}
	total := 0
	for _, n := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		allocs, err := n.Client().Allocations(ctx)
		cancel()
		if err != nil {
			t.Fatalf("allocations of %s: %v", n.Host.Name, err)
		}
		for _, a := range allocs {
			if other, dup := seen[a.Address]; dup {
				t.Fatalf("%s is allocated on both %s and %s", a.Address, other, n.Host.Name)
			}
			seen[a.Address] = n.Host.Name
			total++
		}
	}
	return total
}

func TestIPAMSmallRangePartition(t *testing.T) {
	net, nodes := startMesh(t, 4, "--ipalloc-range", "10.99.0.0/25")
	hosts := net.Hosts()
	if err := net.Partition(hosts[:2], hosts[2:]); err != nil {
		t.Fatal(err)
	}
	expectStates(t, detectTimeout, nodes[:2], map[string]string{hosts[2].Name: "dead", hosts[3].Name: "dead"}, false)

	// One side wants more than it holds; the other a little. Nothing may
	// collide, whatever each side does alone. The first split depends on
	// who asked whom first, so the demand is sized from what the big side
	// owns: more than it has, less than the cluster has.
	const smallDemand = 5
	sideA := 0
	for _, n := range nodes[:2] {
		for _, c := range n.MustStatus().IPAM.Owned {
			sideA += 1 << (32 - netip.MustParsePrefix(c).Bits())
		}
	}
	capacity := 128 - 2 - len(nodes) - 2*smallDemand // network, broadcast, overlay IPs
	want := min(sideA+8, capacity)
	t.Logf("the big side owns %d addresses; it asks for %d, the cluster has %d to give", sideA, want, capacity)
	got, _ := allocateMany(nodes[0], "big", want, 5*time.Second)
	if len(got) == 0 {
		t.Fatal("the big side could not allocate at all")
	}
	for i, n := range nodes[2:] {
		if small, err := allocateMany(n, fmt.Sprintf("small%d", i), smallDemand, 20*time.Second); err != nil {
			t.Fatalf("%s allocated %d of %d: %v", n.Host.Name, len(small), smallDemand, err)
		}
	}
	assertUnique(t, nodes)
	pending := want - len(got)
	t.Logf("during the partition: %d of %d allocated on %s, %d pending", len(got), want, nodes[0].Host.Name, pending)
	if pending == 0 {
		t.Fatal("the big side met all its demand alone: the test needs a side short of space")
	}

	if err := net.Heal(); err != nil {
		t.Fatal(err)
	}
	expectStates(t, 90*time.Second, nodes, allAlive(nodes), true)
	// After the heal, the pending demand is met from the other side's space.
	for i := len(got); i < want; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		_, err := nodes[0].Client().Allocate(ctx, fmt.Sprintf("big-%d", i), "eth0")
		cancel()
		if err != nil {
			t.Fatalf("pending allocation %d after the heal: %v", i, err)
		}
	}
	if total := assertUnique(t, nodes); total != want+2*smallDemand {
		t.Fatalf("%d allocations in all, want %d", total, want+2*smallDemand)
	}
}

func TestIPAMRestartKeepsRangesAndAllocations(t *testing.T) {
	_, nodes := startMesh(t, 2)
	n := nodes[1]
	if _, err := allocateMany(n, "keep", 5, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	snapshot := func() ([]string, []string) {
		st := n.MustStatus()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		allocs, err := n.Client().Allocations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var as []string
		for _, a := range allocs {
			as = append(as, a.ContainerID+"="+a.Address)
		}
		sort.Strings(as)
		return st.IPAM.Owned, as
	}
	// The last allocations are records in the state file's journal, not
	// yet in the state file (docs/ipam.md, "Persistence"), so the restart
	// below replays them. A merge that taught something, or the version
	// floor's move once a minute, folds the journal into the file: then
	// allocate once more and look again.
	journaled := false
	for i := 0; i < 3 && !journaled; i++ {
		if i > 0 {
			if _, err := allocateMany(n, fmt.Sprint("keep-extra", i), 1, 20*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := n.Host.Run(ctx, "cat", "/var/lib/mesh/ipam.journal")
		cancel()
		if err != nil {
			t.Fatalf("reading the journal: %v\n%s", err, out)
		}
		journaled = strings.Contains(out, `"op":"add","containerID":"keep`)
	}
	if !journaled {
		t.Fatal("no allocation recorded in /var/lib/mesh/ipam.journal")
	}
	ownedBefore, allocsBefore := snapshot()
	gwBefore := n.MustStatus().OverlayIP
	if err := n.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	n.Start()
	ownedAfter, allocsAfter := snapshot()
	// The pods' gateway is reported at once and has not moved.
	if gwAfter := n.MustStatus().OverlayIP; gwAfter != gwBefore || gwAfter == "" {
		t.Fatalf("gateway %q before the restart, %q after", gwBefore, gwAfter)
	}
	if !reflect.DeepEqual(ownedBefore, ownedAfter) || !reflect.DeepEqual(allocsBefore, allocsAfter) {
		t.Fatalf("restart changed the node's state:\nowned %v -> %v\nallocs %v -> %v", ownedBefore, ownedAfter, allocsBefore, allocsAfter)
	}
	// The same container gets its address back.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := n.Client().Allocate(ctx, "keep-0", "eth0")
	if err != nil || "keep-0="+a.Address != allocsBefore[0] {
		t.Fatalf("re-allocating keep-0 gave %+v, %v; want %s", a, err, allocsBefore[0])
	}
}
