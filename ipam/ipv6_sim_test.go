package ipam

import (
	"testing"
	"time"
)

// TestSimulationIPv6 runs the simulation of sim_test.go on IPv6 cluster
// ranges, with the same ground truth after every step (no address held by
// two live pods, no pod on a gateway, a node's gateway kept while it has
// pods) and the same checks after the final heal. "large" is a /48, whose
// ring is its lowest /80 (2^48 addresses): nothing may walk it address by
// address. "small" squeezes peers into 128 addresses so that donations and
// exhaustion happen constantly, as TestSimulationSmallRange does for IPv4.
// "reclaim" runs automatic reclaim on the large ring, where allocation goes
// through the lease pool.
func TestSimulationIPv6(t *testing.T) {
	cases := []struct {
		name string
		seed uint64
		p    simParams
	}{
		{"large", 61, simParams{peers: 30, steps: 600, prefix: "fd32::/48"}},
		{"small", 62, simParams{peers: 12, steps: 600, prefix: "fd32:0:0:1::ff80/121"}},
		{"reclaim", 63, simParams{peers: 16, steps: 400, prefix: "fd32:1::/64", reclaim: 8 * time.Second, powerLoss: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seed, p := c.seed, c.p
			if *simSeed != 0 {
				seed = *simSeed
			}
			if *simSteps > 0 {
				p.steps = *simSteps
			}
			runSimulation(t, seed, p)
		})
	}
}

// TestSimulationIPv6Deterministic replays an IPv6 run with automatic
// reclaim (allocation through the lease pool) and compares the digests of
// the message trace and final states, as TestSimulationDeterministic does
// for IPv4.
func TestSimulationIPv6Deterministic(t *testing.T) {
	p := simParams{peers: 8, steps: 250, prefix: "fd32:1::/64", reclaim: 8 * time.Second, powerLoss: true}
	want := runSimulation(t, 64, p)
	if got := runSimulation(t, 64, p); got != want {
		t.Fatalf("replay of seed 64: digest %.16s, first run %.16s", got, want)
	}
}
