//go:build e2ek8s

package k8se2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/testnet"
)

// Settings, from the environment (the Makefile's e2e-k8s target sets them):
//
//	MESH_E2E_CNI        mesh (default) or bridge: see Options.CNI
//	MESH_E2E_IMAGE      the image name in the tarball (default localhost/mesh:dev)
//	MESH_E2E_IMAGE_TAR  `make image`'s tarball (default ../../bin/mesh-image.tar)
//	MESH_E2E_MESH_BIN   the mesh CLI run on the nodes (default ../../bin/mesh)
//	MESH_E2E_PROXY_MODE kube-proxy's mode, nftables (default) or iptables
func setting(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// proxyMode is kube-proxy's mode for the cluster (Options.ProxyMode).
func proxyMode() string { return setting("MESH_E2E_PROXY_MODE", "nftables") }

const (
	meshNamespace = "mesh-system"
	testNamespace = "e2e"
)

// TestKubernetes installs mesh with the real deploy/kubernetes/mesh.yaml on
// a two-node dual-stack cluster (Options.DualStack; mesh.yaml's dual-stack
// --ipalloc-range line uncommented) and checks that every pod has an
// address of each family, pod networking across the nodes over both, a
// dual-stack ClusterIP Service through kube-proxy on both of its
// addresses, and that a deleted node's address ranges of both families
// are reclaimed.
func TestKubernetes(t *testing.T) {
	cni := setting("MESH_E2E_CNI", "mesh")
	imageTar := meshImageTar(t)
	image := setting("MESH_E2E_IMAGE", "localhost/mesh:dev")

	// With mesh, a subset of the upstream suite runs too (see
	// checkUpstreamSubset); make conformance runs all of sig-network's
	// [Conformance] specs.
	c := Up(t, Options{Nodes: 2, CNI: cni, Images: []string{imageTar}, Upstream: cni == "mesh", ProxyMode: proxyMode(), DualStack: true})
	checkImageImported(t, c, image)
	c.checkProxyMode(t)
	applied := installMesh(t, c, image, cni == "mesh")
	if cni == "mesh" {
		c.WaitNodesReady(t, 3*time.Minute)
		t.Logf("TIMING mesh.yaml applied -> all nodes Ready: %v", time.Since(applied).Round(100*time.Millisecond))
	}
	pods := podsOnEveryNode(t, c)
	if cni == "mesh" {
		// An upper bound: the pods are created once the nodes are Ready.
		c.eventually(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := c.exec(ctx, pods[0].Name, "ping", "-c", "1", "-W", "1", pods[1].IP)
			return err
		})
		t.Logf("TIMING mesh.yaml applied -> first pod-to-pod packet across nodes: %v (pods created after the nodes were Ready)", time.Since(applied).Round(100*time.Millisecond))
	}
	checkPodToPod(t, c, pods)
	checkClusterIPService(t, c, pods)
	if cni == "mesh" {
		checkDaemonIsMeshKube(t, c)
		checkHairpin(t, c)
		checkPodToOutside(t, c)
		checkNodesAndPods(t, c, pods)
		checkNetworkPolicies(t, c, pods)
		checkRolloutKeepsTraffic(t, c, pods)
		checkUpstreamSubset(t, c)
	}
	deleteNode(t, c, cni == "mesh")
}

// meshImageTar is `make image`'s tarball.
func meshImageTar(t *testing.T) string {
	t.Helper()
	imageTar, err := filepath.Abs(setting("MESH_E2E_IMAGE_TAR", "../../bin/mesh-image.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(imageTar); err != nil {
		t.Fatalf("the mesh image tarball is missing (run `make image`): %v", err)
	}
	return imageTar
}

// checkImageImported checks that `make image`'s tarball was imported into
// every node's containerd under the name the DaemonSet uses.
func checkImageImported(t *testing.T, c *Cluster, image string) {
	t.Helper()
	want := image // a full name: runtimes store it as it is
	for _, node := range c.Nodes {
		out, err := node.Run(context.Background(), "ctr", "-n", "k8s.io", "images", "ls", "-q")
		if err != nil {
			t.Fatal(err)
		}
		if !containsLine(out, want) {
			t.Fatalf("%s is not in the containerd of %s after import; it has:\n%s", want, node.Name, out)
		}
	}
	t.Logf("image %s imported into %d nodes", want, len(c.Nodes))
}

func containsLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

var imageLine = regexp.MustCompile(`(?m)^(\s*)image: .*$`)
var pullPolicyLine = regexp.MustCompile(`(?m)^(\s*)imagePullPolicy: .*$`)

// dualStackArg is mesh.yaml's commented-out line that a user uncomments for
// a dual-stack cluster: the ranges of both families.
const dualStackArg = "- --ipalloc-range=" + meshCIDR + "," + meshCIDR6

// meshManifest is the real deploy/kubernetes/mesh.yaml with the test's image
// and imagePullPolicy Never (no registry: the image was imported), and with
// dualStack its dual-stack line uncommented, as docs/kubernetes.md tells a
// user to.
func meshManifest(t *testing.T, image string, dualStack bool) string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/kubernetes/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := string(data)
	// The daemon's DaemonSet and the data plane's, the same image.
	if n := len(imageLine.FindAllString(y, -1)); n != 2 {
		t.Fatalf("mesh.yaml has %d image lines, want 2", n)
	}
	y = imageLine.ReplaceAllString(y, "${1}image: "+image)
	y = pullPolicyLine.ReplaceAllString(y, "${1}imagePullPolicy: Never")
	if dualStack {
		if n := strings.Count(y, "# "+dualStackArg+"\n"); n != 1 {
			t.Fatalf("mesh.yaml has %d lines %q, want 1", n, "# "+dualStackArg)
		}
		y = strings.Replace(y, "# "+dualStackArg+"\n", dualStackArg+"\n", 1)
	}
	return y
}

// installMesh creates the key Secret and applies mesh.yaml. With
// wantReady it waits for the DaemonSet's rollout. Without it (bridge mode,
// where another CNI serves the pods) it checks that the API server accepts
// every object, that the DaemonSet's pod was created on every node and that
// its container was started from the imported image, with the Secret, host
// paths and TUN device mounted; then it removes mesh again.
// It returns when mesh.yaml was applied.
func installMesh(t *testing.T, c *Cluster, image string, wantReady bool) time.Time {
	t.Helper()
	manifest := meshManifest(t, image, c.opts.DualStack)
	c.MustKubectl(t, "", "create", "namespace", meshNamespace, "--save-config")
	// A key as mesh keygen writes it (docs/kubernetes.md), a throwaway
	// one given as a literal so that kubectl needs no file.
	var raw crypto.Key
	if _, err := rand.Read(raw[:]); err != nil {
		t.Fatal(err)
	}
	c.MustKubectl(t, "", "-n", meshNamespace, "create", "secret", "generic", "mesh-key", "--from-literal=key="+crypto.KeyFileLine(raw))
	c.MustKubectl(t, manifest, "apply", "--dry-run=server", "-f", "-")
	applied := time.Now()
	t.Log(strings.TrimSpace(c.MustKubectl(t, manifest, "apply", "-f", "-")))
	if wantReady {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		if out, err := c.Kubectl(ctx, "", "-n", meshNamespace, "rollout", "status", "ds/mesh", "--timeout=3m"); err != nil {
			logs, _ := c.Kubectl(context.Background(), "", "-n", meshNamespace, "logs", "ds/mesh", "--tail=50")
			t.Fatalf("mesh DaemonSet not ready: %v\n%s\nlogs:\n%s", err, out, logs)
		}
		// OnDelete has no rollout status: its pods' readiness instead.
		if out, err := c.Kubectl(ctx, "", "-n", meshNamespace, "wait", "--for=condition=Ready", "pod", "-l", "app.kubernetes.io/name=mesh-dataplane", "--timeout=1m"); err != nil {
			logs, _ := c.Kubectl(context.Background(), "", "-n", meshNamespace, "logs", "ds/mesh-dataplane", "--tail=50")
			t.Fatalf("mesh-dataplane DaemonSet not ready: %v\n%s\nlogs:\n%s", err, out, logs)
		}
		t.Logf("mesh and mesh-dataplane DaemonSets ready on %d nodes", len(c.Nodes))
		return applied
	}
	// Every node's mesh container must have started at least once (it may
	// then exit: the daemon flags it is given may not exist yet).
	c.eventually(t, 2*time.Minute, func() error {
		out, err := c.Kubectl(context.Background(), "", "-n", meshNamespace, "get", "pods", "-o", "json")
		if err != nil {
			return err
		}
		var list podList
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return err
		}
		started := map[string]bool{}
		for _, p := range list.Items {
			for _, cs := range p.Status.ContainerStatuses {
				if cs.ContainerID != "" && cs.State.Waiting == nil || cs.RestartCount > 0 || cs.LastState.Terminated != nil {
					started[p.Spec.NodeName] = true
				} else if cs.State.Waiting != nil && cs.State.Waiting.Reason != "ContainerCreating" {
					return fmt.Errorf("mesh on %s: %s: %s", p.Spec.NodeName, cs.State.Waiting.Reason, cs.State.Waiting.Message)
				}
			}
		}
		for _, node := range c.Nodes {
			if !started[node.Name] {
				return fmt.Errorf("mesh container not started yet on %s", node.Name)
			}
		}
		return nil
	})
	logs, _ := c.Kubectl(context.Background(), "", "-n", meshNamespace, "logs", "ds/mesh", "--tail=5")
	t.Logf("mesh container started on every node from %s (bridge mode; its log: %s)", image, strings.TrimSpace(logs))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, manifest, "delete", "--wait=true", "--timeout=90s", "-f", "-"); err != nil {
		t.Fatalf("kubectl delete -f mesh.yaml: %v\n%s", err, out)
	}
	return applied
}

type podList struct {
	Items []pod `json:"items"`
}

type pod struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		PodIP             string `json:"podIP"`
		ContainerStatuses []struct {
			ContainerID  string `json:"containerID"`
			RestartCount int    `json:"restartCount"`
			State        struct {
				Waiting *struct {
					Reason  string `json:"reason"`
					Message string `json:"message"`
				} `json:"waiting"`
			} `json:"state"`
			LastState struct {
				Terminated *struct {
					ExitCode int `json:"exitCode"`
				} `json:"terminated"`
			} `json:"lastState"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

// testPod is a busybox pod serving its own name over HTTP on port 8080.
// IP is its IPv4 address (the primary family: status.podIP), IP6 its IPv6
// address in a dual-stack cluster.
type testPod struct {
	Name, Node, IP, IP6 string
}

// IPs are the pod's addresses, IPv4 first.
func (p testPod) IPs() []string {
	if p.IP6 == "" {
		return []string{p.IP}
	}
	return []string{p.IP, p.IP6}
}

// hostPort is ip:port with an IPv6 address in brackets, for a URL.
func hostPort(ip string, port int) string {
	return net.JoinHostPort(ip, strconv.Itoa(port))
}

// podsOnEveryNode runs one busybox httpd pod on each node and returns them
// with their addresses.
func podsOnEveryNode(t *testing.T, c *Cluster) []testPod {
	t.Helper()
	c.MustKubectl(t, "", "create", "namespace", testNamespace)
	var b strings.Builder
	var pods []testPod
	for i, node := range c.Nodes {
		name := fmt.Sprintf("web%d", i+1)
		pods = append(pods, testPod{Name: name, Node: node.Name})
		b.WriteString("---\n" + httpPodYAML(name, testNamespace, node.Name))
	}
	c.MustKubectl(t, b.String(), "apply", "-f", "-")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "-n", testNamespace, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=150s"); err != nil {
		t.Fatalf("test pods not ready: %v\n%s", err, out)
	}
	for i := range pods {
		pods[i].IP, pods[i].IP6 = podAddresses(t, c, pods[i].Name, c.node(pods[i].Node))
	}
	t.Logf("pods: %+v", pods)
	return pods
}

// podAddresses returns the pod's addresses from its status: status.podIP
// and status.podIPs. The IPv4 one comes first (the cluster's primary
// family) and must be in the node's IPv4 pod range (Cluster.PodRanges); in
// a dual-stack cluster the pod must have exactly one IPv6 address besides,
// in the IPv6 pod range, and none otherwise.
func podAddresses(t *testing.T, c *Cluster, name string, node *Node) (ip, ip6 string) {
	t.Helper()
	out := c.MustKubectl(t, "", "-n", testNamespace, "get", "pod", name, "-o", "jsonpath={.status.podIP} {.status.podIPs[*].ip}")
	f := strings.Fields(out)
	v4, v6 := c.PodRanges(node)
	want := 1
	if v6.IsValid() {
		want = 2
	}
	if len(f) != 1+want || f[0] != f[1] {
		t.Fatalf("pod %s: podIP and podIPs %q, want the podIP first among %d podIPs", name, out, want)
	}
	for i, r := range []netip.Prefix{v4, v6}[:want] {
		a, err := netip.ParseAddr(f[1+i])
		if err != nil || !r.Contains(a) {
			t.Fatalf("pod %s: address %d of %q is not in %s", name, i+1, out, r)
		}
	}
	if want == 2 {
		return f[1], f[2]
	}
	return f[1], ""
}

// node returns the node named name.
func (c *Cluster) node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	panic("no node " + name)
}

// exec runs a command in a test pod. (Busybox's wget is bounded with the
// timeout applet: Debian 12's busybox-static crashes on wget -T.)
func (c *Cluster) exec(ctx context.Context, pod string, cmd ...string) (string, error) {
	return c.Kubectl(ctx, "", append([]string{"-n", testNamespace, "exec", pod, "--"}, cmd...)...)
}

// rolloutLostBound bounds the pings (every 50 ms, from the first node to
// the pod on the second) a rollout of the mesh DaemonSet may lose: the
// data plane runs in the mesh-dataplane DaemonSet, which the rollout does
// not touch, so the goal is none; the bound is generous for a loaded
// machine and still far below the pause of a data plane in the daemon's
// pod (the kubelet's start of the new pod: seconds).
const rolloutLostBound = 5

// checkRolloutKeepsTraffic: `kubectl rollout restart ds/mesh` (every
// daemon killed and started again, one node at a time) while the first
// node pings the pod on the second through the overlay: at most
// rolloutLostBound pings lost, and the mesh-dataplane pods are the same
// before and after.
func checkRolloutKeepsTraffic(t *testing.T, c *Cluster, pods []testPod) {
	t.Helper()
	uids := func(app string) string {
		return strings.TrimSpace(c.MustKubectl(t, "", "-n", meshNamespace, "get", "pods", "-l", "app.kubernetes.io/name="+app,
			"-o", "jsonpath={range .items[*]}{.metadata.uid} {end}"))
	}
	dpPods := func() string { return uids("mesh-dataplane") }
	before, daemonsBefore := dpPods(), strings.Fields(uids("mesh"))
	const count = 800 // 40 s at 50 ms
	ping := c.Nodes[0].Start(t, "ping", []string{"-n", "-c", fmt.Sprint(count), "-i", "0.05", "-W", "2", pods[1].IP}, nil)
	time.Sleep(2 * time.Second)
	started := time.Now()
	c.MustKubectl(t, "", "-n", meshNamespace, "rollout", "restart", "ds/mesh")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "-n", meshNamespace, "rollout", "status", "ds/mesh", "--timeout=150s"); err != nil {
		t.Fatalf("rollout restart of ds/mesh: %v\n%s", err, out)
	}
	took := time.Since(started)
	// Every daemon's pod was replaced.
	for _, uid := range daemonsBefore {
		if strings.Contains(uids("mesh"), uid) {
			t.Errorf("the mesh pod %s is still there after the rollout", uid)
		}
	}
	_ = ping.Wait(2 * time.Minute)
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(ping.Log())
	if m == nil {
		t.Fatalf("no ping summary:\n%s", ping.Log())
	}
	var sent, received int
	fmt.Sscan(m[1], &sent)
	fmt.Sscan(m[2], &received)
	t.Logf("rollout restart of ds/mesh took %v; pings from %s to %s every 50 ms meanwhile: %d of %d lost", took.Round(100*time.Millisecond), c.Nodes[0].Name, pods[1].IP, sent-received, sent)
	if took > 35*time.Second {
		t.Logf("the rollout outlasted the pings (%v)", took)
	}
	if sent < count*9/10 || sent-received > rolloutLostBound {
		t.Errorf("rollout restart of ds/mesh: %d of %d pings lost, want at most %d", sent-received, sent, rolloutLostBound)
	}
	if after := dpPods(); after != before || before == "" {
		t.Errorf("mesh-dataplane pods changed across the rollout of ds/mesh: %q, then %q", before, after)
	}
}

// checkPodToPod checks that every pod reaches every other pod, across
// nodes, by ping and HTTP, at each of its addresses (both families in a
// dual-stack cluster).
func checkPodToPod(t *testing.T, c *Cluster, pods []testPod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			for i, ip := range to.IPs() {
				c.eventually(t, 30*time.Second, func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					defer cancel()
					if _, err := c.exec(ctx, from.Name, "ping", "-c", "1", "-W", "2", ip); err != nil {
						return err
					}
					return httpGet(ctx, c, from.Name, hostPort(ip, 8080), to.Name)
				})
				t.Logf("%s (%s, %s) -> %s (%s, %s): ping and HTTP ok", from.Name, from.Node, from.IPs()[i], to.Name, to.Node, ip)
			}
		}
	}
}

// httpGet fetches http://addr/ from the test pod from and wants the answer
// want (the name of the pod that serves it).
func httpGet(ctx context.Context, c *Cluster, from, addr, want string) error {
	out, err := c.exec(ctx, from, "timeout", "5", "wget", "-q", "-O", "-", "http://"+addr+"/")
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != want {
		return fmt.Errorf("%s got %q from %s, want %q", from, out, addr, want)
	}
	return nil
}

// checkClusterIPService puts a ClusterIP Service in front of each pod and
// checks the other node's pod reaches it (kube-proxy's DNAT, then the pod
// network across nodes). In a dual-stack cluster the Services are
// RequireDualStack, and must have a ClusterIP of each family, each
// reached.
func checkClusterIPService(t *testing.T, c *Cluster, pods []testPod) {
	t.Helper()
	policy, want := "SingleStack", []netip.Prefix{netip.MustParsePrefix(serviceCIDR)}
	if c.opts.DualStack {
		policy, want = "RequireDualStack", append(want, netip.MustParsePrefix(serviceCIDR6))
	}
	for _, p := range pods {
		c.MustKubectl(t, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec: {selector: {app: %s}, ipFamilyPolicy: %s, ports: [{port: 80, targetPort: 8080}]}
`, p.Name, testNamespace, p.Name, policy), "apply", "-f", "-")
	}
	for i, to := range pods {
		from := pods[(i+1)%len(pods)]
		out := c.MustKubectl(t, "", "-n", testNamespace, "get", "svc", to.Name, "-o", "jsonpath={.spec.clusterIPs[*]}")
		ips := strings.Fields(out)
		if len(ips) != len(want) {
			t.Fatalf("service %s has ClusterIPs %q, want one in each of %v", to.Name, out, want)
		}
		for j, ip := range ips {
			if a, err := netip.ParseAddr(ip); err != nil || !want[j].Contains(a) {
				t.Fatalf("service %s: ClusterIP %q is not in %s", to.Name, ip, want[j])
			}
			c.eventually(t, 60*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				return httpGet(ctx, c, from.Name, hostPort(ip, 80), to.Name)
			})
			t.Logf("%s on %s -> service %s (%s) -> %s on %s: ok", from.Name, from.Node, to.Name, hostPort(ip, 80), to.Name, to.Node)
		}
	}
}

// deleteNode takes the last node away (its kubelet stopped and its processes
// killed, as when a machine is decommissioned), deletes its Node object and
// checks it stays deleted. With mesh, it also checks that the remaining
// node's IPAM no longer gives the deleted node any range, in each family's
// ring.
func deleteNode(t *testing.T, c *Cluster, mesh bool) {
	t.Helper()
	gone := c.Nodes[len(c.Nodes)-1]
	other := c.Nodes[0]
	c.StopNode(t, gone)
	c.MustKubectl(t, "", "delete", "node", gone.Name, "--wait=true", "--timeout=60s")
	time.Sleep(3 * time.Second)
	if out, err := c.Kubectl(context.Background(), "", "get", "node", gone.Name); err == nil {
		t.Fatalf("node %s is back after deletion:\n%s", gone.Name, out)
	}
	t.Logf("node %s deleted", gone.Name)
	if !mesh {
		return
	}
	meshBin, err := filepath.Abs(setting("MESH_E2E_MESH_BIN", "../../bin/mesh"))
	if err != nil {
		t.Fatal(err)
	}
	var last string
	c.eventually(t, 2*time.Minute, func() error {
		out, err := other.Run(context.Background(), meshBin, "status", "-o", "json")
		if err != nil {
			return err
		}
		var st api.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("mesh status -o json: %w: %s", err, out)
		}
		// The reachability check ran on the Nodes the API named (no peer
		// is named at launch in the DaemonSet), and found this node
		// reachable.
		if gr := st.GossipRelay; gr == nil || gr.Reachability != api.ReachDirect || gr.CheckedBy == "" {
			return fmt.Errorf("mesh status of %s: gossip relay %+v, want reachable, checked by a Node", other.Name, gr)
		}
		rings := []*api.IPAM{st.IPAM}
		if c.opts.DualStack {
			rings = append(rings, st.IPAM6)
		}
		var b strings.Builder
		for _, ipam := range rings {
			if ipam == nil {
				return fmt.Errorf("mesh status of %s has no IPAM for each family: %s", other.Name, out)
			}
			for _, r := range ipam.Ranges {
				if r.Owner == gone.Name {
					return fmt.Errorf("range %s still owned by deleted node %s", r.CIDR, gone.Name)
				}
			}
			// The deleted node may still be listed (as a dead member) but
			// must own nothing.
			for _, p := range ipam.Peers {
				if p.Name == gone.Name && p.Addresses != 0 {
					return fmt.Errorf("deleted node %s still owns %d addresses of %s", gone.Name, p.Addresses, ipam.Range)
				}
			}
			data, _ := json.MarshalIndent(ipam, "", "  ")
			b.Write(append(data, '\n'))
		}
		last = b.String()
		return nil
	})
	t.Logf("ranges of %s reclaimed; %s's IPAM:\n%s", gone.Name, other.Name, last)

	// Its pods' addresses stay reserved until the API lists none of its
	// pods (the pod garbage collector deletes those of a deleted Node),
	// then the daemons release them (docs/ipam.md, "Kubernetes Node
	// deletion").
	start := time.Now()
	sawReserved := 0
	c.eventually(t, 4*time.Minute, func() error {
		out, err := other.Run(context.Background(), meshBin, "status", "ipam", "-o", "json")
		if err != nil {
			return err
		}
		var st api.IPAMSections
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("mesh status ipam -o json: %w: %s", err, out)
		}
		for _, ipam := range []*api.IPAM{st.IPAM, st.IPAM6} {
			if ipam == nil {
				continue
			}
			for _, p := range ipam.Peers {
				if p.Name == gone.Name && p.Reserved > 0 {
					sawReserved = max(sawReserved, p.Reserved)
					return fmt.Errorf("%d addresses of %s still reserved for the deleted node's pods", p.Reserved, ipam.Range)
				}
			}
		}
		return nil
	})
	pods, err := c.Kubectl(context.Background(), "", "get", "pods", "-A", "--field-selector", "spec.nodeName="+gone.Name, "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(pods) != "" {
		t.Fatalf("the addresses were released while the API still lists pods on %s:\n%s", gone.Name, pods)
	}
	t.Logf("the deleted node's pods' addresses released %v after its ranges were reclaimed (%d reserved meanwhile)", time.Since(start).Round(time.Second), sawReserved)
}

// whoamiPodYAML is a pod serving whoami (TCP and UDP on port 9000: the
// answer is the source address it sees) behind a ClusterIP Service of the
// same name with both protocols on port 80.
func whoamiPodYAML(name, ns, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: %[2]s, labels: {app: %[1]s}}
spec:
  nodeName: %[3]s
  terminationGracePeriodSeconds: 1
  containers:
  - name: whoami
    image: %[4]s
    imagePullPolicy: Never
    command: ["/bin/whoami", "serve", ":9000"]
    readinessProbe: {tcpSocket: {port: 9000}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[1]s}
  ports:
  - {name: tcp, protocol: TCP, port: 80, targetPort: 9000}
  - {name: udp, protocol: UDP, port: 80, targetPort: 9000}
`, name, ns, node, busyboxImage)
}

// checkHairpin checks that a pod reaches itself through its own Service's
// ClusterIP, over TCP and UDP (sig-network's "should allow pods to hairpin
// back to themselves through services"), with br_netfilter on and off:
// kube-proxy DNATs the packet back to the pod it came from and masquerades
// it, and the pod's bridge port must be in hairpin mode for br_netfilter's
// bridged DNAT to turn back.
func checkHairpin(t *testing.T, c *Cluster) {
	t.Helper()
	// Its own namespace: the policy checks that follow count the pods of
	// the test namespace.
	const name, ns = "hairpin", "e2e-hairpin"
	c.MustKubectl(t, "", "create", "namespace", ns)
	c.MustKubectl(t, whoamiPodYAML(name, ns, c.Nodes[0].Name), "apply", "-f", "-")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "-n", ns, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=150s"); err != nil {
		t.Fatalf("pod %s not ready: %v\n%s", name, err, out)
	}
	ip := strings.TrimSpace(c.MustKubectl(t, "", "-n", ns, "get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"))
	// With bridge-nf-call-iptables on (the nodes' default) kube-proxy's
	// DNAT happens on the bridge and the packet turns back through the
	// port's hairpin mode; with it off the packet is routed. Both must work.
	node := c.Nodes[0]
	setBrNF := func(v string) {
		t.Helper()
		if out, err := node.Run(context.Background(), "sysctl", "-w", brNFSysctl+"="+v); err != nil {
			t.Fatalf("sysctl %s=%s on %s: %v\n%s", brNFSysctl, v, node.Name, err, out)
		}
	}
	orig, err := node.Run(context.Background(), "sysctl", "-n", brNFSysctl)
	if err != nil {
		t.Fatalf("sysctl %s on %s: %v\n%s", brNFSysctl, node.Name, err, orig)
	}
	defer setBrNF(strings.TrimSpace(orig))
	for _, brnf := range []string{"1", "0"} {
		setBrNF(brnf)
		for _, proto := range []string{"tcp", "udp"} {
			var got string
			c.eventually(t, 60*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				out, err := execIn(ctx, c, ns+"/"+name, "/bin/whoami", "get", proto, ip+":80")
				got = strings.TrimSpace(out)
				return err
			})
			t.Logf("%s, %s=%s: pod %s reached itself through its Service %s:80 (it saw source %s)", proto, brNFSysctl, brnf, name, ip, got)
		}
	}
}

// brNFSysctl is br_netfilter's switch for passing bridged IPv4 packets to
// the iptables and nftables hooks (per network namespace).
const brNFSysctl = "net.bridge.bridge-nf-call-iptables"

// checkPodToOutside checks outbound NAT: a pod reaches a server on a host
// outside the cluster (a simulated host that runs no Kubernetes and no
// mesh, and has no route to the pod range), which sees the pod's node's
// address as the source; in a dual-stack cluster over IPv6 too (the
// outside host's IPv6 address on the nodes' IPv6 underlay, the node's
// IPv6 address seen).
func checkPodToOutside(t *testing.T, c *Cluster) {
	t.Helper()
	outside := c.Net.AddHost(t)
	targets := []netip.Addr{outside.Addr}
	if c.opts.DualStack {
		a6 := underlay6Addr(outside)
		if out, err := outside.Run(context.Background(), "ip", "-6", "addr", "add", a6.String(), "dev", "eth0", "nodad"); err != nil {
			t.Fatalf("IPv6 address of %s: %v\n%s", outside.Name, err, out)
		}
		targets = append(targets, a6.Addr())
	}
	pods := []string{"web1", "web2"}
	for _, dst := range targets {
		server := netip.AddrPortFrom(dst, 9000).String()
		outside.Start(t, whoamiBinary(t), []string{"serve", server}, nil)
		for i, node := range c.Nodes[:2] {
			want := node.Addr
			if dst.Is6() {
				want = node.Addr6
			}
			c.eventually(t, 60*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				out, err := c.exec(ctx, pods[i], "/bin/whoami", "get", "tcp", server)
				if err != nil {
					return err
				}
				if got := strings.TrimSpace(out); got != want.String() {
					return fmt.Errorf("the outside host saw %s's pod %s come from %s, want the node's address %s", node.Name, pods[i], got, want)
				}
				return nil
			})
			t.Logf("pod %s on %s reached %s outside the cluster as %s", pods[i], node.Name, server, want)
		}
	}
}

// whoamiBinary builds whoami for the simulated hosts.
func whoamiBinary(t *testing.T) string {
	return testnet.BuildBinary(t, "./e2e/testdata/whoami")
}

// checkNodesAndPods checks host processes and pods across nodes, both
// ways: each node's host reaches the pod on the other node (HTTP), and each
// pod reaches a server on the other node's own address, which sees the
// pod's node's address (masqueraded: the answer could not come back
// through WireGuard).
func checkNodesAndPods(t *testing.T, c *Cluster, pods []testPod) {
	t.Helper()
	for i, node := range c.Nodes[:2] {
		node.Start(t, whoamiBinary(t), []string{"serve", node.Addr.String() + ":9001"}, nil)
		other := c.Nodes[1-i]
		to := pods[1-i]
		c.eventually(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := node.Run(ctx, "curl", "-sS", "--max-time", "5", "http://"+to.IP+":8080/")
			if err != nil {
				return fmt.Errorf("host %s to pod %s on %s: %w: %s", node.Name, to.Name, other.Name, err, out)
			}
			if strings.TrimSpace(out) != to.Name {
				return fmt.Errorf("host %s got %q from %s, want %q", node.Name, out, to.IP, to.Name)
			}
			return nil
		})
		t.Logf("host %s -> pod %s on %s: ok", node.Name, to.Name, other.Name)
	}
	// The kubernetes Service: its endpoint is the API server on the
	// control-plane host, which runs no mesh and has no route to the pods.
	api := strings.TrimSpace(c.MustKubectl(t, "", "-n", "default", "get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"))
	for _, from := range pods[:2] {
		c.eventually(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := c.exec(ctx, from.Name, "/bin/whoami", "dial", api+":443")
			return err
		})
		t.Logf("pod %s -> kubernetes Service %s:443 (API server on %s): connected", from.Name, api, c.CP.Name)
	}
	for i, from := range pods[:2] {
		node, other := c.Nodes[i], c.Nodes[1-i]
		c.eventually(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := c.exec(ctx, from.Name, "/bin/whoami", "get", "tcp", other.Addr.String()+":9001")
			if err != nil {
				return err
			}
			if got := strings.TrimSpace(out); got != node.Addr.String() {
				return fmt.Errorf("host %s saw pod %s come from %s, want %s", other.Name, from.Name, got, node.Addr)
			}
			return nil
		})
		t.Logf("pod %s on %s -> host %s (%s): ok", from.Name, node.Name, other.Name, other.Addr)
	}
}

// checkDaemonIsMeshKube checks that the DaemonSet's `mesh launch --kube`
// runs as mesh-kube (mesh, built without the Kubernetes client, execs it
// under the same pid) on every node, and logs the resident memory of the
// daemons and of their data-plane processes (docs/performance.md, "Idle
// memory"). The nodes' processes are all visible from here: the simulated
// hosts share this machine's pid namespace.
func checkDaemonIsMeshKube(t *testing.T, c *Cluster) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range entries {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		comm, err := os.ReadFile("/proc/" + pid + "/comm")
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		name := strings.TrimSpace(string(comm))
		switch {
		case name == "mesh-kube" && slices.Contains(args, "--kube"),
			name == "mesh" && slices.Contains(args, "--kube"),
			name == "mesh-dataplane":
		default:
			continue
		}
		count[name]++
		status, _ := os.ReadFile("/proc/" + pid + "/status")
		t.Logf("MEMORY %s (pid %s): %s", name, pid, strings.Join(grepPrefixed(string(status), "VmRSS", "RssAnon", "RssFile"), ", "))
	}
	if count["mesh-kube"] != len(c.Nodes) || count["mesh"] != 0 {
		t.Errorf("daemons running --kube: %d as mesh-kube, %d as mesh; want %d as mesh-kube (mesh execs it)", count["mesh-kube"], count["mesh"], len(c.Nodes))
	}
}

// grepPrefixed returns the lines of s that start with one of prefixes,
// tabs and spaces squeezed.
func grepPrefixed(s string, prefixes ...string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, strings.Join(strings.Fields(l), " "))
			}
		}
	}
	return out
}
