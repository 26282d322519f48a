package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestRelayChainBreaksMidStream: six hosts whose data plane reaches only
// along two chains from host1 to host6, host1-host2-host4-host6 and
// host1-host3-host5-host6 (UDP 6784 passes between those neighbours and
// is dropped between every other pair, both ways; gossip reaches
// everyone). Pods on host1 and host6 reach each other through the two
// relays of one chain. While pod a pings pod d every 50 ms, the middle
// link of that chain breaks: the pair moves to the other chain and the
// echoes flow again, and no packet goes around a cycle meanwhile. The
// longest path without a cycle has six routing hosts, which leaves a TTL
// of at least 58 at the last for packets sent with 64; a counter on every
// host counts the stream's packets it routes with a TTL below 58.
func TestRelayChainBreaksMidStream(t *testing.T) {
	// chainLoopTTL: 64 less the six routing hosts of the longest path
	// without a cycle (the forward hook sees the TTL after each decrement).
	const chainLoopTTL = 58
	nodes, hosts, a, d, ctx := endPods(t, 6, 10*time.Minute)
	// chains are the relays of each chain, host1's neighbour first.
	chains := [2][2]int{{1, 3}, {2, 4}}
	link := map[[2]int]bool{}
	for _, c := range chains {
		for _, l := range [][2]int{{0, c[0]}, {c[0], c[1]}, {c[1], 5}} {
			link[l], link[[2]int{l[1], l[0]}] = true, true
		}
	}
	for i := range hosts {
		for j := range hosts {
			if i != j && !link[[2]int{i, j}] {
				if err := blockDataPlane(ctx, hosts[i], hosts[j]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// along says which chain every node of it routes the pair along: each
	// node's next hop towards the far end, from its own position, both
	// ways; "" when they do not agree on one.
	along := func(c [2]int) error {
		path := []int{0, c[0], c[1], 5}
		for i, n := range path {
			for _, dir := range []int{-1, 1} {
				far, next := 5, i+1
				if dir < 0 {
					far, next = 0, i-1
				}
				if n == far {
					continue
				}
				con, err := connTo(nodes[n], hosts[far].Name)
				if err != nil {
					return err
				}
				want := hosts[path[next]].Name
				if path[next] == far {
					want = ""
				}
				if con.Via != want {
					return fmt.Errorf("%s shows %s via %q; want %q", hosts[n].Name, hosts[far].Name, con.Via, want)
				}
			}
		}
		return nil
	}
	var used, spare [2]int
	testnet.Eventually(t, 120*time.Second, 500*time.Millisecond, func() error {
		for i, c := range chains {
			if along(c) == nil {
				used, spare = c, chains[1-i]
				return pingBoth(ctx, a, d)
			}
		}
		return fmt.Errorf("no chain chosen: %v; %v", along(chains[0]), along(chains[1]))
	})
	t.Logf("host1 and host6 relayed through %s and %s", hosts[used[0]].Name, hosts[used[1]].Name)

	for _, h := range hosts {
		addLoopCounters(ctx, t, h, a, d, chainLoopTTL)
	}
	// The stream: 40 s of echoes every 50 ms; the chain's middle link
	// breaks 5 s in.
	wait := echoStream(ctx, t, a, d)
	time.Sleep(5 * time.Second)
	for _, pair := range [][2]int{{used[0], used[1]}, {used[1], used[0]}} {
		if err := blockDataPlane(ctx, hosts[pair[0]], hosts[pair[1]]); err != nil {
			t.Fatal(err)
		}
	}
	broke := time.Now()
	testnet.Eventually(t, 120*time.Second, 200*time.Millisecond, func() error { return along(spare) })
	t.Logf("moved to %s and %s %v after the middle link broke", hosts[spare[0]].Name, hosts[spare[1]].Name, time.Since(broke).Round(100*time.Millisecond))
	received := wait()

	var routed int64
	for i, h := range hosts {
		if low := nftCounter(ctx, t, h, "ip", loopTable, "low"); low != 0 {
			t.Errorf("%s routed %d of the pods' echoes or answers with a TTL below %d: a cycle", h.Name, low, chainLoopTTL)
		}
		routed += nftCounter(ctx, t, h, "ip", loopTable, "routed")
		// Calibration: the relays next to the ends are the second
		// routing hosts of the stream's packets, which they see at 62
		// (hop by hop), or the first of the end-to-end packets that
		// carry them, seen at 63 (addLoopCounters).
		if (i == used[0] || i == used[1]) && nftCounter(ctx, t, h, "ip", loopTable, "second") == 0 {
			t.Errorf("%s, a relay of the stream, routed no echo or answer second (TTL 62, or 63 end to end)", h.Name)
		}
	}
	// Each answered echo was routed by four hosts on the way and four on
	// the way back: the counters saw the stream.
	if routed < int64(8*received) {
		t.Fatalf("the counters saw %d routed packets for %d answered echoes: they do not count the stream", routed, received)
	}
	if c, err := connTo(nodes[used[0]], hosts[used[1]].Name); err != nil || c.DirectPath != api.PathDown {
		t.Fatalf("%s's direct path to %s: %+v, %v; want down", hosts[used[0]].Name, hosts[used[1]].Name, c, err)
	}
}
