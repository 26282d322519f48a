package ipam

import (
	"testing"
	"time"
)

func TestZZHunt(t *testing.T) {
	runSimulation(t, *simSeed, simParams{peers: 10, steps: 400, prefix: "10.42.0.0/24", reclaim: 8 * time.Second})
}
