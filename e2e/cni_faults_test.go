package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// addPodIn is addPod in the CNI network named network.
func addPodIn(ctx context.Context, t *testing.T, n *node, network, name string) (netip.Addr, error) {
	if out, err := n.Host.Run(ctx, "ip", "netns", "add", name); err != nil {
		return netip.Addr{}, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	out, err := runCNI(ctx, t, n.Host, "add", network, "/run/netns/"+name)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cnitool add %s on %s: %v\n%s", network, n.Host.Name, err, out)
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		return netip.Addr{}, fmt.Errorf("bad ADD result %q: %v", out, err)
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	return p.Addr(), err
}

// TestCNIGCOnlyItsNetwork: a second CNI network uses the same daemon; a GC
// of the mesh network with no valid attachment releases the mesh network's
// allocations only, not the other network's nor one of unknown network.
func TestCNIGCOnlyItsNetwork(t *testing.T) {
	n, ctx := cniNode(t, 2*time.Minute)
	other := `{"cniVersion":"1.1.0","name":"other","plugins":[{"type":"mesh-cni"}]}`
	if err := os.WriteFile(n.Host.Path("/etc/cni/net.d/20-other.conflist"), []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct{ network, name string }{{"mesh", "gm1"}, {"mesh", "gm2"}, {"other", "go1"}} {
		if _, err := addPodIn(ctx, t, n, p.network, p.name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Client().Allocate(ctx, "legacy", "eth0"); err != nil {
		t.Fatalf("allocation without a network: %v", err)
	}
	// A GC without a network name (an older plugin) releases nothing.
	if released, err := n.Client().GC(ctx, "", nil); err != nil || released != 0 {
		t.Fatalf("GC without a network = %d, %v; want 0 released", released, err)
	}
	if out, err := runCNI(ctx, t, n.Host, "gc", "mesh", "/run/netns/gm1"); err != nil {
		t.Fatalf("GC of mesh: %v\n%s", err, out)
	}
	allocs, err := n.Client().Allocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, a := range allocs {
		got[a.ContainerID] = a.Network
	}
	if len(got) != 2 || got["legacy"] != "" {
		t.Fatalf("after GC of mesh, allocations are %v; want the other network's pod and legacy only", got)
	}
	for id, network := range got {
		if id != "legacy" && network != "other" {
			t.Fatalf("after GC of mesh, %s of network %q is left; want only the other network's", id, network)
		}
	}
	if out, err := runCNI(ctx, t, n.Host, "gc", "other", "/run/netns/go1"); err != nil {
		t.Fatalf("GC of other: %v\n%s", err, out)
	}
	if st := n.MustStatus(); st.IPAM.Allocated != 1 {
		t.Fatalf("after GC of both networks %d allocations are left, want 1 (legacy, of unknown network)", st.IPAM.Allocated)
	}
}

// TestCNIConcurrentAddsOfOneKey: many mesh-cni ADD processes race for the
// same container and interface (cnitool derives the container ID from the
// netns path). All must succeed with the same address, and afterwards the
// pod holds exactly that address, the daemon still holds it for the key and
// the host veth is there: no loser's rollback may release the winner's
// address.
func TestCNIConcurrentAddsOfOneKey(t *testing.T) {
	n, ctx := cniNode(t, 2*time.Minute)
	for round := range 3 {
		name := fmt.Sprintf("race%d", round)
		if out, err := n.Host.Run(ctx, "ip", "netns", "add", name); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", name, err, out)
		}
		const racers = 8
		type answer struct {
			out string
			err error
		}
		answers := make(chan answer, racers)
		for range racers {
			go func() {
				out, err := runCNI(ctx, t, n.Host, "add", "mesh", "/run/netns/"+name)
				answers <- answer{out, err}
			}()
		}
		got := map[string]int{}
		for range racers {
			a := <-answers
			if a.err != nil {
				t.Errorf("round %d: a racing ADD failed: %v\n%s", round, a.err, a.out)
				continue
			}
			var res struct {
				IPs []struct {
					Address string `json:"address"`
				} `json:"ips"`
			}
			if err := json.Unmarshal([]byte(a.out), &res); err != nil || len(res.IPs) != 1 {
				t.Fatalf("round %d: bad ADD result %q: %v", round, a.out, err)
			}
			got[res.IPs[0].Address]++
		}
		if len(got) > 1 {
			t.Errorf("round %d: racing ADDs of one key answered different addresses: %v", round, got)
		}
		podAddrs := netnsAddrs(ctx, t, n, name)
		if len(podAddrs) != 1 {
			t.Fatalf("round %d: the pod holds addresses %v, want exactly one", round, podAddrs)
		}
		allocs, err := n.Client().Allocations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held := 0
		for _, a := range allocs {
			if netip.MustParsePrefix(a.Address).Addr() == podAddrs[0] {
				held++
			}
		}
		if held != 1 || len(allocs) != round+1 {
			t.Fatalf("round %d: the daemon holds %v; want the pod's %s held once and %d allocations", round, allocs, podAddrs[0], round+1)
		}
		links, _ := n.Host.Run(ctx, "ip", "-o", "link", "show", "master", "mesh")
		if c := countVeths(links); c != round+1 {
			t.Fatalf("round %d: %d pod veths on the bridge, want %d:\n%s", round, c, round+1, links)
		}
	}
}

// netnsAddrs lists the global IPv4 addresses in the netns name of n's host,
// as the pod itself sees them.
func netnsAddrs(ctx context.Context, t *testing.T, n *node, name string) []netip.Addr {
	t.Helper()
	out, err := n.Host.Run(ctx, "ip", "netns", "exec", name, "ip", "-4", "-j", "addr", "show", "scope", "global")
	if err != nil {
		t.Fatalf("addresses of netns %s on %s: %v\n%s", name, n.Host.Name, err, out)
	}
	var ifs []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &ifs); err != nil {
		t.Fatalf("bad ip -j output %q: %v", out, err)
	}
	var addrs []netip.Addr
	for _, i := range ifs {
		for _, a := range i.AddrInfo {
			addrs = append(addrs, netip.MustParseAddr(a.Local))
		}
	}
	return addrs
}

func countVeths(ipLinkOutput string) int {
	return strings.Count(ipLinkOutput, "vmesh")
}
