//go:build e2ek8s

package k8se2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestCtrRunCNI runs busybox containers with Debian's containerd's own
// `ctr run --cni` on two simulated hosts running `mesh launch`, with
// nothing but what the daemon installs (its conflist in /etc/cni/net.d,
// mesh-cni in /opt/cni/bin, which is where ctr looks; the CRI plugin of
// Debian's config looks in /usr/lib/cni) plus the reference loopback
// plugin that ctr adds to every container: the containers get mesh
// addresses and ping each other.
func TestCtrRunCNI(t *testing.T) {
	testnet.RequireRoot(t)
	for _, tool := range []string{"containerd", "runc", "ctr"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (Debian packages containerd, runc): %v", tool, err)
		}
	}
	cgs, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "meshctr"
	n := testnet.New(t, testnet.Options{Hosts: 2, Prefix: prefix})
	if err := removeStaleCgroupRoots(cgs, prefix); err != nil {
		t.Logf("removing cgroups of earlier runs: %v", err)
	}
	c := &Cluster{Net: n, opts: Options{CNI: "mesh"}, dir: filepath.Join(n.Dir(), "ctr"), cgs: cgs}
	for _, h := range n.Hosts() {
		c.Nodes = append(c.Nodes, &Node{Host: h, cgroupRoot: fmt.Sprintf("/%s-%s", filepath.Base(n.Dir()), h.Name)})
	}
	t.Cleanup(func() { c.teardown(t) })

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	images, err := buildTestImages(ctx, filepath.Join(c.dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	loopback := testnet.BuildBinary(t, "github.com/containernetworking/plugins/plugins/main/loopback")
	var nodes []*meshtest.Node
	for i, node := range c.Nodes {
		c.prepareNode(t, node)
		if err := node.CopyFile(loopback, "/opt/cni/bin/loopback", 0o755); err != nil {
			t.Fatal(err)
		}
		c.startContainerd(t, node, images)
		var peers []*testnet.Host
		if i > 0 {
			peers = []*testnet.Host{c.Nodes[0].Host}
		}
		nodes = append(nodes, meshtest.Launch(t, node.Host, peers))
	}
	meshtest.DumpLogsOnFailure(t, nodes...)
	testnet.Eventually(t, 90*time.Second, 500*time.Millisecond, func() error { return meshtest.Ready(nodes) })
	for _, m := range nodes {
		meshtest.WaitCNIInstalled(t, m)
	}

	ctr := func(node *Node, args ...string) (string, error) {
		return node.Run(ctx, "ctr", append([]string{"-n", "k8s.io"}, args...)...)
	}
	inet := regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/32`)
	var ips []netip.Addr
	for i, node := range c.Nodes {
		name := fmt.Sprintf("c%d", i)
		if out, err := ctr(node, "run", "-d", "--cni", "--null-io", "--cgroup", node.cgroupRoot+"/"+name, busyboxImage, name, "sleep", "600"); err != nil {
			t.Fatalf("ctr run --cni on %s: %v\n%s", node.Name, err, out)
		}
		t.Cleanup(func() {
			ctr(node, "task", "kill", "-s", "SIGKILL", name)
			time.Sleep(500 * time.Millisecond)
			ctr(node, "task", "delete", "-f", name)
			ctr(node, "container", "delete", name)
		})
		out, err := ctr(node, "task", "exec", "--exec-id", "ip", name, "ip", "-4", "-o", "addr", "show", "eth0")
		m := inet.FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("address of %s on %s: %v\n%s", name, node.Name, err, out)
		}
		ip := netip.MustParseAddr(m[1])
		st := nodes[i].MustStatus()
		owned := false
		for _, r := range st.IPAM.Owned {
			owned = owned || netip.MustParsePrefix(r).Contains(ip)
		}
		if !owned || st.IPAM.Allocated != 1 {
			t.Fatalf("container %s got %s; %s owns %v with %d allocations", name, ip, node.Name, st.IPAM.Owned, st.IPAM.Allocated)
		}
		ips = append(ips, ip)
	}
	for i, node := range c.Nodes {
		to := ips[1-i]
		out, err := ctr(node, "task", "exec", "--exec-id", "ping", fmt.Sprintf("c%d", i), "ping", "-c", "3", "-W", "2", to.String())
		if err != nil {
			t.Fatalf("container on %s cannot ping %s: %v\n%s", node.Name, to, err, out)
		}
	}
}
