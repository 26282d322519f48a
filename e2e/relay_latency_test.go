package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// latencyDelay is the one-way delay TestRelayLowestLatency adds to the
// slow relay's link: 50 ms more on each of its round trips, five
// peer.LatencySteps.
const latencyDelay = 25 * time.Millisecond

// TestRelayLowestLatency: four hosts, host3's link to the others delayed
// (a userspace wire in front of its eth0, testnet.DelayLink). Once the
// coordinates have settled, the data plane between host1 and host2 is cut:
// both relay through host4, although host3 comes first by name, because
// the path through host3 has the higher estimated latency (docs/routing.md,
// "Latency"). Status shows the estimates; the relayed pods' round trip
// stays below what it would be through host3; and the choice holds while
// traffic flows.
func TestRelayLowestLatency(t *testing.T) {
	_, nodes := startMeshSetup(t, testnet.Options{Hosts: 4}, func(n *testnet.Net) {
		n.Hosts()[2].DelayLink(t, latencyDelay)
	}, func(int) []string { return nil })
	for _, n := range nodes {
		waitCNIInstalled(t, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	h1, h2, slow, fast := nodes[0].Host, nodes[1].Host, nodes[2].Host, nodes[3].Host
	a, err := addPod(ctx, t, h1, "poda")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addPod(ctx, t, h2, "podb")
	if err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error { return pingBoth(ctx, a, b) })

	// The estimates host1 and host2 publish and read: host3 far, host4
	// near. Coordinates are republished at most every 30 s
	// (peer.CoordRepublishEvery), so this takes a minute or two.
	testnet.Eventually(t, 4*time.Minute, time.Second, func() error {
		for _, n := range nodes[:2] {
			toSlow, err := connTo(n, slow.Name)
			if err != nil {
				return err
			}
			toFast, err := connTo(n, fast.Name)
			if err != nil {
				return err
			}
			if toSlow.EstimatedRTTMillis < 30 || toFast.EstimatedRTTMillis <= 0 || toFast.EstimatedRTTMillis > 10 {
				return fmt.Errorf("%s estimates %s at %.1f ms (measured %.1f), %s at %.1f ms (measured %.1f); want at least 30 and at most 10",
					n.Host.Name, slow.Name, toSlow.EstimatedRTTMillis, toSlow.RTTMillis, fast.Name, toFast.EstimatedRTTMillis, toFast.RTTMillis)
			}
		}
		return nil
	})

	cutDataPlane(ctx, t, h1, h2)
	viaFast := func() error {
		if err := viaOnBoth(nodes[0], nodes[1], fast.Name, "(the lower latency)"); err != nil {
			return err
		}
		return pingBoth(ctx, a, b)
	}
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, viaFast)

	// Through host3 a round trip would take at least 4 x 25 ms (it
	// crosses host3's link four times); through host4 far less.
	out, err := a.exec(ctx, "ping", "-c", "5", "-i", "0.2", "-W", "2", b.ip.String())
	if err != nil {
		t.Fatalf("ping through the relay: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`= ([0-9.]+)/`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no round trip in ping's output:\n%s", out)
	}
	if least, _ := strconv.ParseFloat(m[1], 64); least >= float64(4*latencyDelay/time.Millisecond) {
		t.Fatalf("relayed round trip at least %.1f ms: as slow as through %s\n%s", least, slow.Name, out)
	}

	// The choice holds while traffic flows.
	end := time.Now().Add(20 * time.Second)
	for time.Now().Before(end) {
		if err := viaFast(); err != nil {
			t.Fatalf("the choice did not hold: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
}
