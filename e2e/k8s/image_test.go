//go:build e2ek8s

package k8se2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// TestMeshImage imports `make image`'s tarball into a real containerd (on a
// simulated host, as the nodes of TestKubernetes do) and runs the mesh
// binary from it. It needs neither Kubernetes nor build.sh, so it is quick.
func TestMeshImage(t *testing.T) {
	testnet.RequireRoot(t)
	imageTar, err := filepath.Abs(setting("MESH_E2E_IMAGE_TAR", "../../bin/mesh-image.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(imageTar); err != nil {
		t.Fatalf("the mesh image tarball is missing (run `make image`): %v", err)
	}
	image := setting("MESH_E2E_IMAGE", "localhost/mesh:dev")
	cgs, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	n := testnet.New(t, testnet.Options{Hosts: 1, Prefix: runPrefix})
	if err := removeStaleCgroupRoots(cgs, runPrefix); err != nil {
		t.Logf("removing cgroups of earlier runs: %v", err)
	}
	h := n.Hosts()[0]
	c := &Cluster{Net: n, dir: filepath.Join(n.Dir(), "k8s"), cgs: cgs, opts: Options{CNI: "mesh"}}
	node := &Node{Host: h, cgroupRoot: fmt.Sprintf("/%s-%s", filepath.Base(n.Dir()), h.Name)}
	c.Nodes = []*Node{node}
	t.Cleanup(func() { c.teardown(t) })

	c.prepareNode(t, node)
	c.startContainerd(t, node, []string{imageTar})
	checkImageImported(t, c, image)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := node.Run(ctx, "ctr", "-n", "k8s.io", "run", "--rm", "--net-host",
		"--cgroup", node.cgroupRoot+"/mesh-image-test",
		image, "mesh-image-test", "/usr/local/bin/mesh", "version")
	if err != nil {
		t.Fatalf("running mesh from the image: %v", err)
	}
	t.Logf("mesh version in the image: %s", strings.TrimSpace(out))
	// The DaemonSet's `mesh launch --kube` runs mesh-kube: it must be
	// there and be the build with Kubernetes.
	out, err = node.Run(ctx, "ctr", "-n", "k8s.io", "run", "--rm", "--net-host",
		"--cgroup", node.cgroupRoot+"/mesh-image-test",
		image, "mesh-image-test", "/usr/local/bin/mesh-kube", "version", "-o", "json")
	if err != nil || !strings.Contains(out, `"kubernetes": true`) {
		t.Fatalf("mesh-kube in the image: %v: %s", err, out)
	}
	// A CNI plugin without CNI_COMMAND prints its usage and fails: what
	// matters is that it exists and runs. The data plane only prints its
	// version (without --version it would open the node's TUN device).
	for _, cmd := range [][]string{{"/usr/local/bin/mesh-cni"}, {"/usr/local/bin/mesh-dataplane", "--version"}} {
		if _, err := os.Stat("../../cmd/" + filepath.Base(cmd[0])); err != nil {
			continue
		}
		out, _ := node.Run(ctx, "ctr", append([]string{"-n", "k8s.io", "run", "--rm", "--net-host",
			"--cgroup", node.cgroupRoot + "/mesh-image-test", image, "mesh-image-test"}, cmd...)...)
		if strings.Contains(out, "no such file") || strings.Contains(out, "not found") {
			t.Fatalf("%s is not runnable in the image: %s", cmd[0], out)
		}
	}
}
