//go:build demo

// Package demo is `make demo`: a small mesh of simulated hosts on this
// machine, each a network namespace with its own mount namespace, running
// the real mesh daemon. Pods are created on every host through the real
// mesh-cni plugin (driven by cnitool, as a container runtime would), they
// ping each other across hosts over the encrypted overlay, and the demo
// prints what an operator would see before tearing everything down.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

func TestDemo(t *testing.T) {
	testnet.RequireRoot(t)
	bin := meshtest.BuildMesh(t)
	cnitool := testnet.BuildBinary(t, "github.com/containernetworking/cni/cnitool")
	net := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "demo"})
	hosts := net.Hosts()
	say("Built %d simulated hosts on one switch: %s", len(hosts), hostList(hosts))

	nodes := make([]*meshtest.Node, len(hosts))
	for i, h := range hosts {
		var peers []*testnet.Host
		if i > 0 {
			peers = hosts[:1]
		}
		nodes[i] = meshtest.Launch(t, h, peers)
		say("%s$ MESH_PASSWORD=... MESH_NAME=%s mesh %s", h.Name, meshtest.MeshName, strings.Join(nodes[i].Args, " "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	say("Waiting for the hosts to find each other, split the address range and install the CNI plugin...")
	testnet.Eventually(t, 2*time.Minute, 500*time.Millisecond, func() error { return meshtest.Ready(nodes) })
	for _, n := range nodes {
		meshtest.WaitCNIInstalled(t, n)
	}

	type pod struct {
		host     *testnet.Host
		name, ip string
	}
	var pods []pod
	for _, h := range hosts {
		for j := 1; j <= 2; j++ {
			name := fmt.Sprintf("%s-pod%d", h.Name, j)
			if _, err := h.Run(ctx, "ip", "netns", "add", name); err != nil {
				t.Fatal(err)
			}
			out, err := h.Run(ctx, "env", "CNI_PATH=/opt/cni/bin", "NETCONFPATH=/etc/cni/net.d", cnitool, "add", "mesh", "/run/netns/"+name)
			if err != nil {
				t.Fatalf("cnitool add on %s: %v", h.Name, err)
			}
			var res struct{ IPs []struct{ Address string } }
			if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
				t.Fatalf("bad CNI result %q: %v", out, err)
			}
			ip := strings.TrimSuffix(res.IPs[0].Address, "/32")
			pods = append(pods, pod{h, name, ip})
			say("%s$ cnitool add mesh /run/netns/%s   -> %s", h.Name, name, ip)
		}
	}
	say("Every pod pings one pod on each other host, over WireGuard:")
	for _, from := range pods {
		for _, to := range pods {
			if to.host == from.host || !strings.HasSuffix(to.name, "pod1") {
				continue
			}
			out, err := from.host.Run(ctx, "ip", "netns", "exec", from.name, "ping", "-c", "1", "-W", "2", to.ip)
			if err != nil {
				t.Fatalf("%s cannot ping %s: %v", from.name, to.name, err)
			}
			rtt := "?"
			if i := strings.Index(out, "time="); i >= 0 {
				rtt = strings.Fields(out[i:])[0]
			}
			say("  %-12s (%s) -> %-12s (%s): ok, %s", from.name, from.ip, to.name, to.ip, rtt)
		}
	}
	for _, sub := range [][]string{{"status"}, {"status", "peers"}, {"status", "connections"}, {"status", "ipam"}} {
		out, err := hosts[0].Run(ctx, bin, sub...)
		if err != nil {
			t.Fatalf("mesh %v: %v", sub, err)
		}
		say("%s$ mesh %s\n%s", hosts[0].Name, strings.Join(sub, " "), out)
	}
	for _, p := range pods {
		if _, err := p.host.Run(ctx, "env", "CNI_PATH=/opt/cni/bin", "NETCONFPATH=/etc/cni/net.d", cnitool, "del", "mesh", "/run/netns/"+p.name); err != nil {
			t.Errorf("cnitool del %s: %v", p.name, err)
		}
	}
	for _, n := range nodes {
		if err := n.Proc.Stop(10 * time.Second); err != nil {
			t.Errorf("stopping mesh on %s: %v", n.Host.Name, err)
		}
	}
	say("Deleted the pods and stopped the daemons; the simulated hosts are torn down now.")
}

func say(format string, args ...any) { fmt.Fprintf(os.Stdout, "\n"+format+"\n", args...) }

func hostList(hosts []*testnet.Host) string {
	var s []string
	for _, h := range hosts {
		s = append(s, fmt.Sprintf("%s (%s)", h.Name, h.Addr))
	}
	return strings.Join(s, ", ")
}
