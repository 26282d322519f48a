package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// TestRmpeerAfterOperatorRestart: the operator's daemon restarts while it
// cannot reach a live peer; rmpeer of that peer at once is refused with a
// message saying when to retry (before, the restarted daemon did not know
// the peer and handed its live pods' addresses to itself). After the
// heal, rmpeer of the live peer is still refused, and rmpeer of a peer
// that is really dead goes through once the window has passed.
func TestRmpeerAfterOperatorRestart(t *testing.T) {
	tn, nodes := startMesh(t, 3)
	op, live, dead := nodes[0], nodes[1], nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rmpeer := func(name string) (string, error) {
		return op.Host.Run(ctx, op.Bin, "rmpeer", name)
	}

	if err := dead.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	expectStates(t, detectTimeout, []*node{op, live}, map[string]string{dead.Host.Name: "dead"}, false)
	if err := tn.Partition([]*testnet.Host{op.Host}, []*testnet.Host{live.Host, dead.Host}); err != nil {
		t.Fatal(err)
	}
	if err := op.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	op.Start()
	for _, name := range []string{live.Host.Name, dead.Host.Name} {
		out, err := rmpeer(name)
		if err == nil || !strings.Contains(out, "this node started") || !strings.Contains(out, "try again in") {
			t.Fatalf("rmpeer %s right after the operator's restart: err=%v, want a refusal saying when to retry\n%s", name, err, out)
		}
	}
	if got := op.MustStatus().IPAM.Owned; len(got) == 0 {
		t.Fatalf("the operator's node owns nothing after the refused rmpeer")
	}
	if err := tn.Heal(); err != nil {
		t.Fatal(err)
	}
	expectStates(t, detectTimeout, []*node{op}, map[string]string{live.Host.Name: "alive"}, false)
	// What the restarted node learns of the dead peer comes from the live
	// one (memberlist keeps dead members for a while), or from nobody.
	if out, err := rmpeer(live.Host.Name); err == nil || !strings.Contains(out, "try again") && !strings.Contains(out, "alive") {
		t.Fatalf("rmpeer of the live peer after the heal: err=%v\n%s", err, out)
	}
	start := time.Now()
	testnet.Eventually(t, 100*time.Second, 2*time.Second, func() error {
		out, err := rmpeer(dead.Host.Name)
		if err != nil && !strings.Contains(out, "try again in") {
			t.Fatalf("refusal of the dead peer without saying when to retry: %v\n%s", err, out)
		}
		return err
	})
	t.Logf("rmpeer of the dead peer accepted %s after the heal", time.Since(start).Round(time.Second))
	// The live peer kept its ranges and is still refused.
	if out, err := rmpeer(live.Host.Name); err == nil || !strings.Contains(out, "alive") {
		t.Fatalf("rmpeer of the live peer: err=%v\n%s", err, out)
	}
	if st := live.MustStatus(); len(st.IPAM.Owned) == 0 {
		t.Fatalf("the live peer lost its ranges: %+v", st.IPAM)
	}
}
