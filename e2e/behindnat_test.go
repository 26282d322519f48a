package e2e

import (
	"fmt"
	"net/netip"
	"slices"

	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
	"github.com/vishvananda/netlink"
)

// TestNATNode: host4 and host5 each sit behind a masquerading router of
// their own (10.9.0.0/24 and 10.10.0.0/24, outbound only: nothing from the
// mesh's network reaches them but answers to what they sent) and join a
// mesh of three naming host1, with no flag about NAT: the check at launch
// finds host1 cannot connect back to them (while it finds host2 and host3
// reachable). They attach to host1, the others reach their gossip through
// host1, and they stay live members; their data plane is reached at their
// NAT's public address, which they announce, kept open by keepalives, and
// host4 and host5 punch a direct path to each other through both NATs.
// One ring, no address twice, and the pods of all five reach each other
// both ways. When their home is killed, they attach to another member and
// stay reachable.
func TestNATNode(t *testing.T) {
	testnet.RequireRoot(t)
	tn := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "nt"})
	siteA := tn.AddNATSite(t, netip.MustParsePrefix("10.9.0.0/24"))
	siteB := tn.AddNATSite(t, netip.MustParsePrefix("10.10.0.0/24"))
	behind, behindB := siteA.AddHost(t), siteB.AddHost(t)
	publicOf := map[string]netip.Addr{behind.Name: siteA.PublicAddr(), behindB.Name: siteB.PublicAddr()}
	hs := tn.Hosts()
	nodes := []*node{launch(t, hs[0], nil), launch(t, hs[1], hs[:1]), launch(t, hs[2], hs[:1])}
	nodes = append(nodes, launch(t, behind, hs[:1]), launch(t, behindB, hs[:1]))
	natNodes := nodes[3:]
	dumpLogsOnFailure(t, nodes...)
	start := time.Now()
	expectStates(t, 2*time.Minute, nodes, allAlive(nodes), true)
	t.Logf("all five alive on every host %v after the last launch", time.Since(start).Round(100*time.Millisecond))

	// The check at launch: host1 named no peer, host2 and host3 were
	// reached by host1, host4 and host5 were not, and host1 saw their
	// checks come from their NAT routers.
	host1Gossip := netip.AddrPortFrom(hs[0].Addr, 6783).String()
	wantReach := []api.GossipRelay{
		{Reachability: api.ReachUnchecked},
		{Reachability: api.ReachDirect, CheckedBy: host1Gossip},
		{Reachability: api.ReachDirect, CheckedBy: host1Gossip},
		{Reachability: api.ReachBehindNAT, CheckedBy: host1Gossip},
		{Reachability: api.ReachBehindNAT, CheckedBy: host1Gossip},
	}
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		for i, n := range nodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			gr, want := st.GossipRelay, wantReach[i]
			if gr == nil || gr.Reachability != want.Reachability || gr.CheckedBy != want.CheckedBy {
				return fmt.Errorf("%s's reachability %+v, want %q checked by %q", n.Host.Name, gr, want.Reachability, want.CheckedBy)
			}
			if pub, ok := publicOf[n.Host.Name]; ok {
				if seen, err := netip.ParseAddrPort(gr.SeenAs); err != nil || seen.Addr() != pub {
					return fmt.Errorf("host1 saw %s's check come from %q, want its NAT router %v", n.Host.Name, gr.SeenAs, pub)
				}
			}
		}
		return nil
	})

	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		for _, n := range natNodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.GossipRelay == nil || st.GossipRelay.Home != hs[0].Name {
				return fmt.Errorf("%s's gossip relay status %+v, want home host1", n.Host.Name, st.GossipRelay)
			}
		}
		st1, err := nodes[0].Status()
		if err != nil {
			return err
		}
		if st1.GossipRelay == nil || !slices.Equal(st1.GossipRelay.Attached, []string{behind.Name, behindB.Name}) {
			return fmt.Errorf("host1's gossip relay status %+v, want host4 and host5 attached", st1.GossipRelay)
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
	pods := podOnEach(ctx, t, nodes, "nat")
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error { return pingPods(ctx, pods) })
	t.Logf("every pod reaches every pod %v after the last launch", time.Since(start).Round(100*time.Millisecond))
	// The others send to the public address each NAT node announced
	// (not its private one), and host4 and host5 reach each other
	// directly: both sent to the other's public address, so each NAT
	// took the other's packets as answers.
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error {
		for _, n := range nodes {
			for _, nat := range natNodes {
				if n == nat {
					continue
				}
				c, err := connTo(n, nat.Host.Name)
				if err != nil {
					return err
				}
				want := netip.AddrPortFrom(publicOf[nat.Host.Name], 6784).String()
				if c.Endpoint != want || c.Via != "" || c.DirectPath != api.PathUp {
					return fmt.Errorf("%s to %s: endpoint %s, via %q, direct path %q; want %s, direct and up", n.Host.Name, nat.Host.Name, c.Endpoint, c.Via, c.DirectPath, want)
				}
			}
		}
		// Masquerading keeps the WireGuard port: both say so, and
		// announce none.
		for _, nat := range natNodes {
			st, err := nat.Status()
			if err != nil {
				return err
			}
			if gr := st.GossipRelay; gr == nil || gr.NATPort != api.NATPortKept || gr.PublicPort != 0 {
				return fmt.Errorf("%s's NAT port status %+v, want %q", nat.Host.Name, gr, api.NATPortKept)
			}
		}
		return nil
	})
	t.Logf("every pair direct, host4 and host5 through both NATs, %v after the last launch", time.Since(start).Round(100*time.Millisecond))
	testnet.Eventually(t, 30*time.Second, time.Second, func() error { return pingPods(ctx, pods) })

	// And it holds: host4 and host5 stay live members everywhere for 20 s.
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

	// The home goes (kill -9): host4 and host5 attach to another member
	// and stay live members of the others, reachable by their pods.
	if err := nodes[0].Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	testnet.Eventually(t, time.Minute, 500*time.Millisecond, func() error {
		for _, n := range natNodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if home := st.GossipRelay.Home; home != hs[1].Name && home != hs[2].Name {
				return fmt.Errorf("%s's home is %q, want host2 or host3", n.Host.Name, home)
			}
		}
		return nil
	})
	t.Logf("host4 and host5 attached to another home %v after host1 was killed", time.Since(killed).Round(100*time.Millisecond))
	rest := nodes[1:]
	for range 20 {
		time.Sleep(time.Second)
		for _, n := range rest {
			got, err := peerStates(n)
			if err != nil {
				t.Fatal(err)
			}
			for _, nat := range natNodes {
				if s := got[nat.Host.Name]; s != string(api.MemberAlive) && s != string(api.MemberSuspect) && n != nat {
					t.Fatalf("%s sees %s %q after it moved home", n.Host.Name, nat.Host.Name, s)
				}
			}
		}
	}
	testnet.Eventually(t, 60*time.Second, time.Second, func() error { return pingPods(ctx, pods[1:]) })
}

// TestNATPortMapped: host4 and host5 sit behind NATs that give their
// WireGuard packets another source port (6784 becomes 40784 behind one,
// 41784 behind the other), the same for every destination, as most home
// and office routers do. Each asks the public members which port they see
// its packets come from, and announces it; the others send its data plane
// there, and host4 and host5 punch a direct path through both NATs. With
// no port announced each sends to the other's public address and port
// 6784, which the other's NAT does not let in, and the pair stays relayed
// (the test then fails on its endpoints). host6 sits behind a NAT that
// gives each destination another port (a symmetric NAT): the peers it
// asks disagree, it says so and announces no port, and its pods reach
// everyone's all the same (relayed where no hole opens).
func TestNATPortMapped(t *testing.T) {
	testnet.RequireRoot(t)
	tn := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "npm"})
	siteA := tn.AddNATSite(t, netip.MustParsePrefix("10.9.0.0/24"))
	siteB := tn.AddNATSite(t, netip.MustParsePrefix("10.10.0.0/24"))
	siteC := tn.AddNATSite(t, netip.MustParsePrefix("10.11.0.0/24"))
	siteA.MapUDPPort(t, 6784, 40784)
	siteB.MapUDPPort(t, 6784, 41784)
	siteC.MapUDPPortPerDestination(t, 6784, 42000, 49999)
	behind, behindB, symmetric := siteA.AddHost(t), siteB.AddHost(t), siteC.AddHost(t)
	mapped := map[string]netip.AddrPort{
		behind.Name:  netip.AddrPortFrom(siteA.PublicAddr(), 40784),
		behindB.Name: netip.AddrPortFrom(siteB.PublicAddr(), 41784),
	}
	hs := tn.Hosts()
	nodes := []*node{launch(t, hs[0], nil), launch(t, hs[1], hs[:1]), launch(t, hs[2], hs[:1])}
	nodes = append(nodes, launch(t, behind, hs[:1]), launch(t, behindB, hs[:1]), launch(t, symmetric, hs[:1]))
	natNodes, symNode := nodes[3:5], nodes[5]
	dumpLogsOnFailure(t, nodes...)
	start := time.Now()
	expectStates(t, 2*time.Minute, nodes, allAlive(nodes), true)

	// Every node shows the port each NAT node announced; the node behind
	// the symmetric NAT found that the peers see different ports, and
	// announces none.
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error {
		for _, n := range nodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			for _, p := range st.Peers {
				if p.Name == symmetric.Name && p.PublicPort != 0 {
					return fmt.Errorf("%s sees %s, behind a symmetric NAT, announce port %d", n.Host.Name, p.Name, p.PublicPort)
				}
				want, ok := mapped[p.Name]
				if !ok {
					continue
				}
				if p.PublicAddress != want.Addr().String() || p.PublicPort != int(want.Port()) {
					return fmt.Errorf("%s sees %s public at %q port %d, want %s", n.Host.Name, p.Name, p.PublicAddress, p.PublicPort, want)
				}
			}
			if want, ok := mapped[n.Host.Name]; ok {
				if gr := st.GossipRelay; gr == nil || gr.NATPort != api.NATPortMapped || gr.PublicPort != int(want.Port()) {
					return fmt.Errorf("%s's own NAT port status %+v, want %q %d", n.Host.Name, gr, api.NATPortMapped, want.Port())
				}
			} else if n == symNode {
				if gr := st.GossipRelay; gr == nil || gr.NATPort != api.NATPortVaries || gr.PublicPort != 0 {
					return fmt.Errorf("%s's own NAT port status %+v, want %q", n.Host.Name, gr, api.NATPortVaries)
				}
			} else if st.GossipRelay != nil && st.GossipRelay.NATPort != "" {
				return fmt.Errorf("%s is not behind NAT but reports its NAT port %q", n.Host.Name, st.GossipRelay.NATPort)
			}
		}
		return nil
	})
	t.Logf("both mapped ports announced and seen everywhere %v after the last launch", time.Since(start).Round(100*time.Millisecond))

	// Every pair with a NAT node is direct at the mapped endpoint, host4
	// and host5 through both NATs (host6 aside: behind the symmetric
	// NAT, its pairs with them are relayed). About 20 s here; two
	// minutes for a loaded machine. (It took 67 s in about one run of
	// three while a direct gossip dial to a NAT node that failed before
	// its home was known still counted as a down path for a minute:
	// mesh.Membership.DirectFailures.)
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error {
		for _, n := range nodes {
			for _, nat := range natNodes {
				if n == nat || n == symNode {
					continue
				}
				c, err := connTo(n, nat.Host.Name)
				if err != nil {
					return err
				}
				want := mapped[nat.Host.Name].String()
				if c.Endpoint != want || c.Via != "" || c.DirectPath != api.PathUp {
					return fmt.Errorf("%s to %s: endpoint %s, via %q, direct path %q; want %s, direct and up", n.Host.Name, nat.Host.Name, c.Endpoint, c.Via, c.DirectPath, want)
				}
			}
		}
		return nil
	})
	t.Logf("every pair direct, host4 and host5 through both NATs, %v after the last launch", time.Since(start).Round(100*time.Millisecond))
	ctx := t.Context()
	pods := podOnEach(ctx, t, nodes, "npm")
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error { return pingPods(ctx, pods) })
	// Direct with the pods' traffic on it. (Under CPU load a path can be
	// relayed for a moment, as any path whose probes go unanswered: it
	// must come back.)
	testnet.Eventually(t, time.Minute, time.Second, func() error {
		for _, pair := range [][2]*node{{natNodes[0], natNodes[1]}, {natNodes[1], natNodes[0]}} {
			c, err := connTo(pair[0], pair[1].Host.Name)
			if err != nil {
				return err
			}
			if c.Via != "" || c.Endpoint != mapped[pair[1].Host.Name].String() {
				return fmt.Errorf("%s to %s after the pings: endpoint %s via %q", pair[0].Host.Name, pair[1].Host.Name, c.Endpoint, c.Via)
			}
		}
		return nil
	})
}

// natMoveTable is the nftables table TestFirewalledAtRunTime adds in a
// host's namespace to put it behind a firewall.
const natMoveTable = "natmovetest"

// TestFirewalledAtRunTime: host4 joins a mesh of three reachable, then a
// firewall is put in front of it at run time (nothing new comes in on its
// underlay, what answers its own traffic does, as behind a NAT gateway):
// the re-check (--reach-recheck) finds that host1 cannot connect back, and
// host4 attaches to a home, through which the others reach its gossip; it
// stays a live member and its pods keep reaching the others' both ways.
// When the firewall goes, the next re-check finds it reachable and it
// detaches.
// recheckingMesh is four live members, host2 to host4 joined through
// host1, each re-checking its reachability every 5 s.
func recheckingMesh(t *testing.T, prefix string) ([]*testnet.Host, []*node) {
	t.Helper()
	testnet.RequireRoot(t)
	hs := testnet.New(t, testnet.Options{Hosts: 4, Prefix: prefix}).Hosts()
	recheck := []string{"--reach-recheck", "5s"}
	nodes := []*node{launch(t, hs[0], nil, recheck...)}
	for _, h := range hs[1:] {
		nodes = append(nodes, launch(t, h, hs[:1], recheck...))
	}
	dumpLogsOnFailure(t, nodes...)
	expectStates(t, 2*time.Minute, nodes, allAlive(nodes), true)
	return hs, nodes
}

func TestFirewalledAtRunTime(t *testing.T) {
	hs, nodes := recheckingMesh(t, "fw")
	moved := nodes[3]
	host1Gossip := netip.AddrPortFrom(hs[0].Addr, 6783).String()
	// reach waits until moved's reachability is want, checked by host1,
	// and its home is home; and host1's attached nodes are attached.
	reach := func(want api.Reachability, home string, attached []string) {
		t.Helper()
		testnet.Eventually(t, 2*time.Minute, 500*time.Millisecond, func() error {
			st, err := moved.Status()
			if err != nil {
				return err
			}
			if gr := st.GossipRelay; gr == nil || gr.Reachability != want || gr.CheckedBy != host1Gossip || gr.Home != home {
				return fmt.Errorf("host4's gossip relay status %+v, want %q checked by %s, home %q", gr, want, host1Gossip, home)
			}
			st1, err := nodes[0].Status()
			if err != nil {
				return err
			}
			var got []string
			if st1.GossipRelay != nil {
				got = st1.GossipRelay.Attached
			}
			if !slices.Equal(got, attached) {
				return fmt.Errorf("host1's attached nodes %v, want %v", got, attached)
			}
			return nil
		})
	}
	reach(api.ReachDirect, "", nil)

	ctx := t.Context()
	pods := podOnEach(ctx, t, nodes, "fw")
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error { return pingPods(ctx, pods) })

	for _, args := range [][]string{
		{"add", "table", "inet", natMoveTable},
		{"add", "chain", "inet", natMoveTable, "in", "{ type filter hook input priority -10; policy accept; }"},
		{"add", "rule", "inet", natMoveTable, "in", "iifname", "eth0", "ct", "state", "new", "drop"},
	} {
		if out, err := moved.Host.Run(ctx, "nft", args...); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	firewalled := time.Now()
	reach(api.ReachBehindNAT, hs[0].Name, []string{hs[3].Name})
	t.Logf("host4 attached to host1 %v after the firewall went up", time.Since(firewalled).Round(100*time.Millisecond))
	// It holds: a live member everywhere, its pods reached both ways.
	for range 15 {
		time.Sleep(time.Second)
		for _, n := range nodes {
			got, err := peerStates(n)
			if err != nil {
				t.Fatal(err)
			}
			if s := got[moved.Host.Name]; n != moved && s != string(api.MemberAlive) && s != string(api.MemberSuspect) {
				t.Fatalf("%s sees host4 %q behind its firewall", n.Host.Name, s)
			}
		}
	}
	testnet.Eventually(t, time.Minute, time.Second, func() error { return pingPods(ctx, pods) })

	if out, err := moved.Host.Run(ctx, "nft", "delete", "table", "inet", natMoveTable); err != nil {
		t.Fatalf("nft delete table: %v: %s", err, out)
	}
	opened := time.Now()
	reach(api.ReachDirect, "", nil)
	t.Logf("host4 detached %v after the firewall went down", time.Since(opened).Round(100*time.Millisecond))
	expectStates(t, time.Minute, nodes, allAlive(nodes), true)
	testnet.Eventually(t, time.Minute, time.Second, func() error { return pingPods(ctx, pods) })
}

// natAtRunTime puts host h behind a NAT at run time, as a host moved
// behind an address-translating gateway sees it: its connections leave
// from public (an address added to its eth0) and nothing new gets in, only
// answers. The connection-tracking table is flushed, as a move loses every
// flow: a flow tracked before the NAT would keep leaving untranslated.
// Called again with another address, it is the NAT's public address
// changing; with an invalid one, the NAT goes.
func natAtRunTime(t *testing.T, h *testnet.Host, was, public netip.Addr) {
	t.Helper()
	ctx := t.Context()
	h.Run(ctx, "nft", "delete", "table", "ip", natMoveTable)
	if was.IsValid() {
		if out, err := h.Run(ctx, "ip", "addr", "del", was.String()+"/32", "dev", "eth0"); err != nil {
			t.Fatalf("ip addr del %s: %v: %s", was, err, out)
		}
	}
	if public.IsValid() {
		if out, err := h.Run(ctx, "ip", "addr", "add", public.String()+"/32", "dev", "eth0"); err != nil {
			t.Fatalf("ip addr add %s: %v: %s", public, err, out)
		}
		for _, args := range [][]string{
			{"add", "table", "ip", natMoveTable},
			{"add", "chain", "ip", natMoveTable, "in", "{ type filter hook input priority -10; policy accept; }"},
			{"add", "rule", "ip", natMoveTable, "in", "iifname", "eth0", "ct", "state", "new", "drop"},
			{"add", "chain", "ip", natMoveTable, "out", "{ type nat hook postrouting priority 100; policy accept; }"},
			{"add", "rule", "ip", natMoveTable, "out", "oifname", "eth0", "ip", "saddr", h.Addr.String(), "snat", "to", public.String()},
		} {
			if out, err := h.Run(ctx, "nft", args...); err != nil {
				t.Fatalf("nft %v: %v: %s", args, err, out)
			}
		}
	}
	if err := h.Do(func() error { return netlink.ConntrackTableFlush(netlink.ConntrackTable) }); err != nil {
		t.Fatalf("flush conntrack on %s: %v", h.Name, err)
	}
}

// TestNATAtRunTime: a member moved behind an address-translating NAT at
// run time (its connections now leave from another address, and nothing
// new reaches it) attaches to a home, announces the NAT's public address,
// stays a live member, and its pods reach and are reached by all; the
// others send its data plane to the public address. When the NAT's public
// address changes, it announces the new one and the others follow; when
// the NAT goes, it detaches and is reached at its own address again.
func TestNATAtRunTime(t *testing.T) {
	hs, nodes := recheckingMesh(t, "natrt")
	moved := nodes[3]
	ctx := t.Context()
	pods := podOnEach(ctx, t, nodes, "nat")
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error { return pingPods(ctx, pods) })

	// behind waits until moved reports want, seen as seenAs by the
	// peer that checked it, its home is home, and every other node sees
	// it announce public (none if invalid) and sends its data plane to
	// endpoint. (WireGuard's roaming alone would bring the endpoint
	// there: the announcement is what makes a peer's first packets go
	// there too.)
	behind := func(want api.Reachability, seenAs netip.Addr, home string, public, endpoint netip.Addr) {
		t.Helper()
		testnet.Eventually(t, 2*time.Minute, 500*time.Millisecond, func() error {
			st, err := moved.Status()
			if err != nil {
				return err
			}
			gr := st.GossipRelay
			if gr == nil || gr.Reachability != want || gr.Home != home {
				return fmt.Errorf("host4's gossip relay status %+v, want %q with home %q", gr, want, home)
			}
			if got, err := netip.ParseAddrPort(gr.SeenAs); err != nil || got.Addr() != seenAs {
				return fmt.Errorf("host4 is seen as %q, want %s", gr.SeenAs, seenAs)
			}
			for _, n := range nodes[:3] {
				st, err := n.Status()
				if err != nil {
					return err
				}
				announced := "none"
				for _, p := range st.Peers {
					if p.Name == moved.Host.Name && p.PublicAddress != "" {
						announced = p.PublicAddress
					}
				}
				if wantPublic := map[bool]string{true: public.String(), false: "none"}[public.IsValid()]; announced != wantPublic {
					return fmt.Errorf("%s sees host4 announce public address %s, want %s", n.Host.Name, announced, wantPublic)
				}
				c, err := connTo(n, moved.Host.Name)
				if err != nil {
					return err
				}
				if want := netip.AddrPortFrom(endpoint, 6784).String(); c.Endpoint != want {
					return fmt.Errorf("%s sends host4's data plane to %s, want %s", n.Host.Name, c.Endpoint, want)
				}
			}
			return nil
		})
	}
	// live checks that moved stays a live member everywhere for a while
	// and that every pod reaches every other.
	live := func() {
		t.Helper()
		for range 10 {
			time.Sleep(time.Second)
			for _, n := range nodes[:3] {
				got, err := peerStates(n)
				if err != nil {
					t.Fatal(err)
				}
				if s := got[moved.Host.Name]; s != string(api.MemberAlive) && s != string(api.MemberSuspect) {
					t.Fatalf("%s sees host4 %q", n.Host.Name, s)
				}
			}
		}
		testnet.Eventually(t, time.Minute, time.Second, func() error { return pingPods(ctx, pods) })
	}
	behind(api.ReachDirect, hs[3].Addr, "", netip.Addr{}, hs[3].Addr)

	public := netip.MustParseAddr("192.0.2.200")
	natAtRunTime(t, hs[3], netip.Addr{}, public)
	start := time.Now()
	behind(api.ReachBehindNAT, public, hs[0].Name, public, public)
	t.Logf("host4 attached and announced %s %v after it was moved behind the NAT", public, time.Since(start).Round(100*time.Millisecond))
	live()

	changed := netip.MustParseAddr("192.0.2.201")
	natAtRunTime(t, hs[3], public, changed)
	start = time.Now()
	behind(api.ReachBehindNAT, changed, hs[0].Name, changed, changed)
	t.Logf("host4 announced the new public address %s %v after it changed", changed, time.Since(start).Round(100*time.Millisecond))
	live()

	natAtRunTime(t, hs[3], changed, netip.Addr{})
	start = time.Now()
	behind(api.ReachDirect, hs[3].Addr, "", netip.Addr{}, hs[3].Addr)
	t.Logf("host4 detached %v after the NAT went", time.Since(start).Round(100*time.Millisecond))
	live()
}
