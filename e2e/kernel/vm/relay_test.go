//go:build kernelvm

package kernelvm

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestKernelRelay: the triangle of e2e's TestRelayTriangle with the
// kernel's WireGuard on every node: with UDP 6784 dropped between host1
// and host2, host3's kernel routes their pods' traffic from its WireGuard
// device back into it, inside the ends' end-to-end devices (kernel
// WireGuard links too), and status shows each end "via" host3, end to
// end; once the rules are gone, both ends are direct again.
func TestKernelRelay(t *testing.T) {
	net := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "krl"})
	hosts := net.Hosts()
	var nodes []*meshtest.Node
	for i, h := range hosts {
		var peers []*testnet.Host
		if i > 0 {
			peers = hosts[:1]
		}
		nodes = append(nodes, launch(t, h, peers, "--dataplane", "kernel"))
	}
	meshtest.DumpLogsOnFailure(t, nodes...)
	testnet.Eventually(t, readyTimeout, time.Second, func() error { return meshtest.Ready(nodes) })
	for _, n := range nodes {
		meshtest.WaitCNIInstalled(t, n)
	}
	pa := addPod(t, hosts[0], "pa")
	pb := addPod(t, hosts[1], "pb")
	both := func() error {
		if err := pa.ping(pb.ip, 0); err != nil {
			return err
		}
		return pb.ping(pa.ip, 0)
	}
	testnet.Eventually(t, time.Minute, time.Second, both)
	path := func(from *meshtest.Node, to *testnet.Host, via string) error {
		st, err := from.Status()
		if err != nil {
			return err
		}
		for _, c := range st.Connections {
			if c.Peer != to.Name {
				continue
			}
			if c.Via != via || (via == "") != (c.DirectPath == api.PathUp) || c.EndToEnd != (via != "") {
				return fmt.Errorf("%s shows %s via %q, direct path %q, end to end %v; want via %q", from.Host.Name, to.Name, c.Via, c.DirectPath, c.EndToEnd, via)
			}
			return nil
		}
		return fmt.Errorf("%s has no connection to %s", from.Host.Name, to.Name)
	}
	for _, p := range [][2]*testnet.Host{{hosts[0], hosts[1]}, {hosts[1], hosts[0]}} {
		run(t, p[0], "nft", "add", "table", "inet", "relaytest")
		run(t, p[0], "nft", "add", "chain", "inet", "relaytest", "in", "{ type filter hook input priority 0; policy accept; }")
		run(t, p[0], "nft", "add", "chain", "inet", "relaytest", "out", "{ type filter hook output priority 0; policy accept; }")
		run(t, p[0], "nft", "add", "rule", "inet", "relaytest", "in", "ip", "saddr", p[1].Addr.String(), "udp", "sport", "6784", "drop")
		run(t, p[0], "nft", "add", "rule", "inet", "relaytest", "out", "ip", "daddr", p[1].Addr.String(), "udp", "dport", "6784", "drop")
	}
	cut := time.Now()
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error {
		if err := path(nodes[0], hosts[1], hosts[2].Name); err != nil {
			return err
		}
		if err := path(nodes[1], hosts[0], hosts[2].Name); err != nil {
			return err
		}
		return both()
	})
	t.Logf("kernel nodes relayed through %s %v after the cut", hosts[2].Name, time.Since(cut).Round(100*time.Millisecond))
	run(t, hosts[0], "nft", "delete", "table", "inet", "relaytest")
	run(t, hosts[1], "nft", "delete", "table", "inet", "relaytest")
	testnet.Eventually(t, 2*time.Minute, time.Second, func() error {
		if err := path(nodes[0], hosts[1], ""); err != nil {
			return err
		}
		if err := path(nodes[1], hosts[0], ""); err != nil {
			return err
		}
		return both()
	})
}
