package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestNATNode: host4 sits behind a masquerading router (10.9.0.0/24,
// outbound only: nothing from the mesh's network reaches it but answers
// to what it sent) and joins a mesh of three with --behind-nat, naming
// host1. It attaches to host1, the others reach its gossip through
// host1, and it stays a live member; its data plane is reached at the
// endpoint the others observe (the router's address, WireGuard's
// roaming), kept open by keepalives. One ring, no address twice, and the
// pods of all four reach each other both ways. When its home is killed,
// host4 attaches to another member and stays reachable.
func TestNATNode(t *testing.T) {
	testnet.RequireRoot(t)
	tn := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "nt"})
	site := tn.AddNATSite(t, netip.MustParsePrefix("10.9.0.0/24"))
	behind := site.AddHost(t)
	hs := tn.Hosts()
	nodes := []*node{launch(t, hs[0], nil), launch(t, hs[1], hs[:1]), launch(t, hs[2], hs[:1])}
	nodes = append(nodes, launch(t, behind, hs[:1], "--behind-nat"))
	dumpLogsOnFailure(t, nodes...)
	start := time.Now()
	expectStates(t, 2*time.Minute, nodes, allAlive(nodes), true)
	t.Logf("all four alive on every host %v after the last launch", time.Since(start).Round(100*time.Millisecond))

	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		st, err := nodes[3].Status()
		if err != nil {
			return err
		}
		if st.GossipRelay == nil || st.GossipRelay.Home != hs[0].Name {
			return fmt.Errorf("host4's gossip relay status %+v, want home host1", st.GossipRelay)
		}
		st1, err := nodes[0].Status()
		if err != nil {
			return err
		}
		if st1.GossipRelay == nil || !slices.Equal(st1.GossipRelay.Attached, []string{behind.Name}) {
			return fmt.Errorf("host1's gossip relay status %+v, want host4 attached", st1.GossipRelay)
		}
		return nil
	})

	// One ring, ready everywhere.
	testnet.Eventually(t, 2*time.Minute, 500*time.Millisecond, func() error {
		for _, n := range nodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.IPAM == nil || st.IPAM.Status != "ready" || st.OverlayIP == "" {
				return fmt.Errorf("%s: IPAM not ready: %+v", n.Host.Name, st.IPAM)
			}
		}
		return nil
	})
	ctx := t.Context()
	for _, n := range nodes {
		waitCNIInstalled(t, n)
	}
	var pods []*pod
	seen := map[netip.Addr]string{}
	for i, n := range nodes {
		p, err := addPod(ctx, t, n.Host, fmt.Sprintf("nat%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[p.ip]; dup {
			t.Fatalf("%s and %s both got %s", other, p.name, p.ip)
		}
		seen[p.ip] = p.name
		pods = append(pods, p)
	}
	testnet.Eventually(t, 90*time.Second, time.Second, func() error { return pingPods(ctx, pods) })
	t.Logf("every pod reaches every pod %v after the last launch", time.Since(start).Round(100*time.Millisecond))
	for _, n := range nodes[:3] {
		c, err := connTo(n, behind.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s to host4: endpoint %s, via %q, direct path %q", n.Host.Name, c.Endpoint, c.Via, c.DirectPath)
	}

	// And it holds: host4 stays a live member everywhere for 20 s.
	for range 20 {
		time.Sleep(time.Second)
		for _, n := range nodes {
			got, err := peerStates(n)
			if err != nil {
				t.Fatal(err)
			}
			for name, state := range got {
				if state != string(api.MemberAlive) && state != string(api.MemberSuspect) {
					t.Fatalf("%s sees %s %q", n.Host.Name, name, state)
				}
			}
		}
	}
	expectStates(t, 30*time.Second, nodes, allAlive(nodes), true)

	// The home goes (kill -9): host4 attaches to another member and stays
	// a live member of the other two, reachable by their pods.
	if err := nodes[0].Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var home string
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		st, err := nodes[3].Status()
		if err != nil {
			return err
		}
		home = st.GossipRelay.Home
		if home != hs[1].Name && home != hs[2].Name {
			return fmt.Errorf("host4's home is %q, want host2 or host3", home)
		}
		return nil
	})
	t.Logf("host4 attached to %s %v after host1 was killed", home, time.Since(killed).Round(100*time.Millisecond))
	rest := nodes[1:]
	for range 20 {
		time.Sleep(time.Second)
		for _, n := range rest {
			got, err := peerStates(n)
			if err != nil {
				t.Fatal(err)
			}
			if s := got[behind.Name]; s != string(api.MemberAlive) && s != string(api.MemberSuspect) {
				t.Fatalf("%s sees host4 %q after host4 moved to %s", n.Host.Name, s, home)
			}
		}
	}
	testnet.Eventually(t, 60*time.Second, time.Second, func() error { return pingPods(ctx, pods[1:]) })
}
