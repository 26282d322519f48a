package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// The info lines of ipam/admission.go: a peer that joined a running mesh
// with automatic reclaim on, and the same peer once it votes.
const (
	joiningLog = "joined a running mesh: not voting until every peer holds this peer's info"
	votingLog  = "every peer holds this peer's info: voting from now on"
)

// TestJoinerVotesAfterRmpeerOfDeadVoter: on real daemons with automatic
// reclaim on, a host that joins a running mesh starts joining (docs/ipam.md,
// "Joining as a voter"). A voter that died and was not removed holds it
// back: the joiner's status names that voter and the way out, the others
// show the joiner as joining, and the joiner still places a pod (its
// lease is echoed by the live voters). Once an operator removes the dead
// voter, the joiner votes.
func TestJoinerVotesAfterRmpeerOfDeadVoter(t *testing.T) {
	testnet.RequireRoot(t)
	net := testnet.New(t, testnet.Options{Hosts: 4, Prefix: "jn"})
	hosts := net.Hosts()
	flags := []string{"--ipalloc-range", "10.42.0.0/24", "--ipalloc-reclaim-after", "10m"}
	var nodes []*node
	for i, h := range hosts[:3] {
		peers := slices.Delete(slices.Clone(hosts[:3]), i, i+1)
		nodes = append(nodes, launch(t, h, peers, flags...))
	}
	dumpLogsOnFailure(t, nodes...)
	expectStates(t, detectTimeout, nodes, allAlive(nodes), true)
	waitConnected(t, nodes)
	a, dead := nodes[0], nodes[2]
	// A host that came up after the first two split the range joins
	// like any joiner; with everyone alive it votes within seconds.
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		for _, n := range nodes {
			if log := n.Proc.Log(); strings.Contains(log, joiningLog) && !strings.Contains(log, votingLog) {
				return fmt.Errorf("%s joined and does not vote yet", n.Host.Name)
			}
		}
		st, err := a.Status()
		if err != nil {
			return err
		}
		if st.IPAM == nil || len(st.IPAM.Peers) != len(nodes) {
			return fmt.Errorf("%s does not list every peer yet: %+v", a.Host.Name, st.IPAM)
		}
		for _, p := range st.IPAM.Peers {
			if p.Joining {
				return fmt.Errorf("%s shows %s joining", a.Host.Name, p.Name)
			}
		}
		return nil
	})
	if err := dead.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	expectStates(t, detectTimeout, nodes[:2], map[string]string{dead.Host.Name: "dead"}, false)

	j := launch(t, hosts[3], hosts[:1], flags...)
	dumpLogsOnFailure(t, j)
	waitCNIInstalled(t, j)
	ipamOf := func(n *node) (*api.IPAM, error) {
		st, err := n.Status()
		if err != nil {
			return nil, err
		}
		if st.IPAM == nil {
			return nil, fmt.Errorf("%s: no ipam section", n.Host.Name)
		}
		return st.IPAM, nil
	}
	joiningIn := func(n *node) (bool, error) {
		ip, err := ipamOf(n)
		if err != nil {
			return false, err
		}
		i := slices.IndexFunc(ip.Peers, func(p api.IPAMPeer) bool { return p.Name == j.Host.Name })
		if i < 0 {
			return false, fmt.Errorf("%s does not list %s yet", n.Host.Name, j.Host.Name)
		}
		return ip.Peers[i].Joining, nil
	}
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		if !strings.Contains(j.Proc.Log(), joiningLog) {
			return fmt.Errorf("%s logged no %q", j.Host.Name, joiningLog)
		}
		ip, err := ipamOf(j)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(ip.Problems, func(p string) bool {
			return strings.Contains(p, "does not vote") && strings.Contains(p, "("+dead.Host.Name+")") && strings.Contains(p, "mesh rmpeer")
		}) {
			return fmt.Errorf("%s's problems do not name %s as holding its vote back: %q", j.Host.Name, dead.Host.Name, ip.Problems)
		}
		if joining, err := joiningIn(a); err != nil || !joining {
			return fmt.Errorf("%s does not show %s joining (err %v)", a.Host.Name, j.Host.Name, err)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := addPod(ctx, t, j.Host, "jn-pod"); err != nil {
		t.Fatalf("a pod on joining %s: %v", j.Host.Name, err)
	}
	if strings.Contains(j.Proc.Log(), votingLog) {
		t.Fatalf("%s votes although dead %s never held its info", j.Host.Name, dead.Host.Name)
	}
	testnet.Eventually(t, 2*time.Minute, 2*time.Second, func() error {
		out, err := a.Host.Run(ctx, a.Bin, "rmpeer", dead.Host.Name)
		if err != nil {
			return fmt.Errorf("rmpeer %s: %v: %s", dead.Host.Name, err, out)
		}
		return nil
	})
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		if !strings.Contains(j.Proc.Log(), votingLog) {
			return fmt.Errorf("%s logged no %q", j.Host.Name, votingLog)
		}
		for _, n := range []*node{a, nodes[1], j} {
			if joining, err := joiningIn(n); err != nil || joining {
				return fmt.Errorf("%s still shows %s joining (err %v)", n.Host.Name, j.Host.Name, err)
			}
		}
		return nil
	})
}
