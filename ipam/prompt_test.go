package ipam

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// failingTransport records the space requests sent and refuses the first
// one, as the gossip layer does for a member that stopped but is not yet
// known to be dead.
type failingTransport struct {
	mu   sync.Mutex
	asks []string // every peer a space request was sent to, in order
}

func (f *failingTransport) Broadcast([]byte) {}

func (f *failingTransport) SendTo(peer string, msg []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(msg) == 0 || msg[0] != msgAsk {
		return nil
	}
	f.asks = append(f.asks, peer)
	if len(f.asks) == 1 {
		return errors.New("connection refused")
	}
	return nil
}

// A new peer asks for space as soon as it learns the ring and a donor,
// without waiting for a tick, and when the best donor cannot be reached it
// asks the next one at once.
func TestNewPeerAsksAtOnceAndFallsBack(t *testing.T) {
	s := settledSim(t, 1, "10.0.0.0/22", 0, "a", "b")
	tr := &failingTransport{}
	c := mustNew(t, testConfig(t, "c", "10.0.0.0/22"), tr)
	defer c.Close()
	c.SetMembers(map[string]bool{"a": true, "b": true})
	if err := c.MergeRemoteState(s.nodes["a"].LocalState()); err != nil {
		t.Fatalf("merging a's state: %v", err)
	}
	// No Tick was called: the request went out on the merge alone.
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.asks) != 2 || tr.asks[0] == tr.asks[1] {
		t.Fatalf("space requests sent to %v, want one to each of a (or b, refused) and then the other", tr.asks)
	}
}

// TestLeaseWaitAsksNoSpace: with automatic reclaim on, a pod beyond the
// lease pool waits for the echoes of the next one; that is no reason to
// ask for space while the peer has free addresses. It was: each such wait
// made the best donor give half its free space, and a steady allocator cut
// the ring into hundreds of runs (found by TestHostilePeerWithReclaim).
func TestLeaseWaitAsksNoSpace(t *testing.T) {
	net := settledSim(t, 44, "10.0.0.0/16", time.Minute, "a", "b", "c")
	net.rounds(3)
	before := net.nodes["a"].Ranges()
	a := net.nodes["a"]
	waited := 0
	for r := range 5 {
		for i := range 20 {
			if err := simAllocate(a, fmt.Sprintf("pod%d-%d", r, i)); err != nil {
				waited++
			}
		}
		net.round()
	}
	if waited == 0 {
		t.Fatal("no allocation waited for lease echoes: the test does not test anything")
	}
	net.settle(t, 3)
	if got := net.nodes["a"].Ranges(); !slices.Equal(got, before) {
		t.Fatalf("the ring moved while a waited for echoes with free space: %v, was %v", got, before)
	}
}
