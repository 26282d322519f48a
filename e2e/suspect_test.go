package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// TestSuspectThenDead follows the suspect path end to end: a node cut off
// from the others is first reported "suspect" (known only from memberlist's
// log line, see mesh/memberlistlog.go), keeps that state for a while, and is
// then declared dead. If the pinned memberlist stopped logging the line, the
// node would go straight from alive to dead and this test fails. Two hosts,
// so that host1's own probe is the only one that can suspect host2 (a
// suspicion gossiped by a third node is not logged as one).
func TestSuspectThenDead(t *testing.T) {
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 2, Prefix: "susp"})
	hosts := net.Hosts()
	nodes := launchStar(t, hosts)
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)

	if err := net.Partition(hosts[:1], hosts[1:]); err != nil {
		t.Fatal(err)
	}
	victim := hosts[1].Name
	var seen []string // distinct states of the victim in host1's view, in order
	deadline := time.Now().Add(detectTimeout)
	for time.Now().Before(deadline) {
		got, err := peerStates(nodes[0])
		if err != nil {
			t.Fatal(err)
		}
		if s := got[victim]; len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
		if seen[len(seen)-1] == "dead" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	want := []string{"alive", "suspect", "dead"}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("host1 saw %s go through %v, want %v", victim, seen, want)
	}
}
