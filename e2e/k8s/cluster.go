//go:build e2ek8s

package k8se2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// Options configure Up.
type Options struct {
	// Nodes is the number of worker nodes (default 2). The control plane
	// has a host of its own, so the mesh DaemonSet runs on the nodes only.
	Nodes int
	// CNI is "mesh" (the daemon installs mesh-cni, as in production) or
	// "bridge": the reference bridge + host-local plugins with static routes
	// between the nodes, which proves the cluster itself works.
	CNI string
	// Images are image tarballs imported into every node's containerd, in
	// addition to the pause and busybox test images.
	Images []string
	// Upstream also builds the upstream e2e suite (e2e.test), its images
	// and CoreDNS (build.sh conformance), and imports the images under the
	// names the suite uses: see upstream.go.
	Upstream bool
	// ProxyMode is kube-proxy's mode: "nftables" (default) or "iptables"
	// (the iptables command of the machine, Debian's iptables-nft).
	ProxyMode string
	// DualStack makes the cluster IPv4/IPv6 dual-stack, as a user sets one
	// up: Service ranges of both families (kube-apiserver,
	// kube-controller-manager), an IPv6 node address beside the IPv4 one
	// on the underlay (the kubelet's --node-ip lists both), IPv6
	// forwarding on the nodes, kube-proxy's clusterCIDR of both families,
	// and pod ranges of both families (mesh.yaml's dual-stack
	// --ipalloc-range line, or host-local ranges in bridge mode).
	DualStack bool
}

// Cluster is a running Kubernetes cluster on simulated hosts.
type Cluster struct {
	Net   *testnet.Net
	CP    *testnet.Host // etcd, kube-apiserver, kube-controller-manager, kube-scheduler
	Nodes []*Node
	opts  Options
	bins  binaries
	pki   *pki
	dir   string // the cluster's files: pki, configs, images, per-host state
	cgs   []cgroupMount
	admin string // admin kubeconfig
}

// Node is one worker host.
type Node struct {
	*testnet.Host
	// PodCIDR is the node's pod range in bridge mode (empty in mesh mode:
	// mesh's IPAM decides); PodCIDR6 its IPv6 one in a dual-stack cluster.
	PodCIDR, PodCIDR6 netip.Prefix
	// Addr6 is the node's IPv6 address on the underlay in a dual-stack
	// cluster (the second of its InternalIPs), invalid otherwise.
	Addr6      netip.Addr
	cgroupRoot string
	containerd *testnet.Proc
	kubelet    *testnet.Proc
	kubeProxy  *testnet.Proc
}

// Cluster-wide settings.
const (
	apiPort       = 6443
	serviceCIDR   = "10.96.0.0/16"
	kubernetesSvc = "10.96.0.1"
	bridgeCIDR    = "10.244.0.0/16" // bridge mode: node i gets 10.244.i.0/24
	meshCIDR      = "10.32.0.0/12"  // mesh's default cluster range
	// Dual-stack: the IPv6 Service range (a /112, as kind's), the IPv6
	// pod ranges, and the nodes' IPv6 underlay (node i gets fd00:192::i,
	// i the host's index).
	serviceCIDR6   = "fd00:10:96::/112"
	bridgeCIDR6    = "fd00:10:244::/56" // bridge mode: node i gets fd00:10:244:i::/64
	meshCIDR6      = "fd32::/48"        // mesh.yaml's dual-stack --ipalloc-range
	underlay6      = "fd00:192::/64"
	runPrefix      = "meshk8s"
	containerdSock = "/run/containerd/containerd.sock"
)

// nodeDirs are bound to per-host directories in each node's mount
// namespace, so that containerd and the kubelet run with their default paths
// and nothing of theirs lands on the machine. (testnet already makes /run,
// /var/lib/mesh, /etc/cni and /opt/cni private.) The mount points are
// created on the machine when missing, empty, like testnet's.
var nodeDirs = []string{
	"/var/lib/kubelet", "/var/lib/containerd", "/var/lib/cni", "/opt/containerd",
	"/var/log/pods", "/var/log/containers", "/etc/kubernetes",
}

// binaries are the directories build.sh reports.
type binaries struct{ k8s, etcd, cni, e2e, coredns string }

func (b binaries) kube(name string) string { return filepath.Join(b.k8s, name) }

// buildBinaries runs build.sh (a no-op once the versioned cache is complete),
// with upstream also for the e2e suite and CoreDNS.
func buildBinaries(t testing.TB, upstream bool) binaries {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	start := time.Now()
	var args []string
	if upstream {
		args = append(args, "conformance")
	}
	cmd := exec.CommandContext(ctx, "./build.sh", args...)
	cmd.Stderr = os.Stderr // progress of a cold build
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build.sh: %v\n%s", err, out)
	}
	var b binaries
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "k8s":
			b.k8s = v
		case "etcd":
			b.etcd = v
		case "cni":
			b.cni = v
		case "e2e":
			b.e2e = v
		case "coredns":
			b.coredns = v
		}
	}
	if b.k8s == "" || b.etcd == "" || b.cni == "" {
		t.Fatalf("build.sh did not report the binary directories:\n%s", out)
	}
	if upstream && (b.e2e == "" || b.coredns == "") {
		t.Fatalf("build.sh conformance did not report the e2e and CoreDNS directories:\n%s", out)
	}
	t.Logf("binaries ready in %v: %s, %s, %s", time.Since(start).Round(time.Second), b.k8s, b.etcd, b.cni)
	return b
}

// Up builds (or finds cached) binaries, starts the control plane and the
// nodes, imports the images into every node and waits until every node is
// registered (and Ready, in bridge mode; in mesh mode a node is Ready only
// once mesh has installed its CNI config). Everything is torn down when t
// ends: see Cluster.teardown.
func Up(t *testing.T, opts Options) *Cluster {
	t.Helper()
	testnet.RequireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.CNI != "mesh" && opts.CNI != "bridge" {
		t.Fatalf("CNI must be mesh or bridge, not %q", opts.CNI)
	}
	if opts.ProxyMode == "" {
		opts.ProxyMode = "nftables"
	}
	if opts.ProxyMode != "nftables" && opts.ProxyMode != "iptables" {
		t.Fatalf("kube-proxy mode must be nftables or iptables, not %q", opts.ProxyMode)
	}
	for _, tool := range []string{"containerd", "runc", "ctr", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (Debian packages containerd, runc, nftables): %v", tool, err)
		}
	}
	cgs, err := cgroupMounts()
	if err != nil {
		t.Fatal(err)
	}
	bins := buildBinaries(t, opts.Upstream)
	start := time.Now()

	n := testnet.New(t, testnet.Options{Hosts: 1 + opts.Nodes, Prefix: runPrefix})
	if err := removeStaleCgroupRoots(cgs, runPrefix); err != nil {
		t.Logf("removing cgroups of earlier runs: %v", err)
	}
	hosts := n.Hosts()
	c := &Cluster{Net: n, CP: hosts[0], opts: opts, bins: bins, dir: filepath.Join(n.Dir(), "k8s"), cgs: cgs}
	for i, h := range hosts[1:] {
		node := &Node{Host: h, cgroupRoot: fmt.Sprintf("/%s-%s", filepath.Base(n.Dir()), h.Name)}
		if opts.CNI == "bridge" {
			node.PodCIDR = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i+1))
		}
		if opts.DualStack {
			node.Addr6 = underlay6Addr(h).Addr()
			if opts.CNI == "bridge" {
				node.PodCIDR6 = netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", i+1))
			}
		}
		c.Nodes = append(c.Nodes, node)
	}
	// Registered after testnet's cleanup, so it runs before it; the
	// processes started below are killed before it runs.
	t.Cleanup(func() { c.teardown(t) })

	if err := c.setupPKI(); err != nil {
		t.Fatalf("certificates: %v", err)
	}
	c.startControlPlane(t)
	imgDir := filepath.Join(c.dir, "images")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	images, err := buildTestImages(ctx, imgDir)
	if err != nil {
		t.Fatal(err)
	}
	images = append(images, opts.Images...)
	if opts.Upstream {
		up, err := buildUpstreamImages(ctx, imgDir, bins)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, up...)
	}
	for _, node := range c.Nodes {
		c.startNode(t, node, images)
	}
	if opts.Upstream {
		c.tagUpstreamAliases(t)
	}
	if opts.CNI == "bridge" {
		c.routePodCIDRs(t)
	}
	for _, node := range c.Nodes {
		c.eventually(t, 2*time.Minute, func() error {
			_, err := c.Kubectl(context.Background(), "", "get", "node", node.Name)
			return err
		})
	}
	if opts.CNI == "bridge" {
		c.WaitNodesReady(t, 2*time.Minute)
	}
	// Runs before the processes started above are killed: the cluster
	// can still be asked what went wrong.
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpState(t)
		}
		c.stopNodes()
	})
	t.Logf("cluster of %d nodes up in %v", len(c.Nodes), time.Since(start).Round(100*time.Millisecond))
	return c
}

// underlay6Addr is host h's address on the IPv6 underlay of a dual-stack
// cluster, with the underlay's prefix length (for ip addr add): the host's
// index in underlay6.
func underlay6Addr(h *testnet.Host) netip.Prefix {
	u := netip.MustParsePrefix(underlay6)
	a := u.Addr().As16()
	a[15] = byte(h.Index)
	return netip.PrefixFrom(netip.AddrFrom16(a), u.Bits())
}

// serviceCIDRs is the Service range, or both in a dual-stack cluster
// (IPv4 first: the primary family), as kube-apiserver and
// kube-controller-manager take it.
func (c *Cluster) serviceCIDRs() string {
	if c.opts.DualStack {
		return serviceCIDR + "," + serviceCIDR6
	}
	return serviceCIDR
}

// podCIDR6 is the IPv6 cluster pod range of a dual-stack cluster.
func (c *Cluster) podCIDR6() string {
	if c.opts.CNI == "bridge" {
		return bridgeCIDR6
	}
	return meshCIDR6
}

// PodRanges are the ranges a pod on node may have addresses in: its
// node's ranges in bridge mode, the cluster's ranges with mesh (whose IPAM
// places them); the IPv6 one is invalid unless the cluster is dual-stack.
func (c *Cluster) PodRanges(node *Node) (v4, v6 netip.Prefix) {
	if c.opts.CNI == "bridge" {
		return node.PodCIDR, node.PodCIDR6
	}
	v4 = netip.MustParsePrefix(meshCIDR)
	if c.opts.DualStack {
		v6 = netip.MustParsePrefix(meshCIDR6)
	}
	return v4, v6
}

func (c *Cluster) apiServer() string {
	return fmt.Sprintf("https://%s:%d", c.CP.Addr, apiPort)
}

func (c *Cluster) setupPKI() error {
	p, err := newPKI(filepath.Join(c.dir, "pki"))
	if err != nil {
		return err
	}
	c.pki = p
	cp := c.CP.Addr.String()
	if err := p.issue("apiserver", "kube-apiserver", nil, cp, "127.0.0.1", kubernetesSvc, "localhost",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"); err != nil {
		return err
	}
	clients := []struct{ name, cn, org string }{
		{"admin", "admin", "system:masters"},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
		{"kube-proxy", "system:kube-proxy", ""},
	}
	for _, cl := range clients {
		var orgs []string
		if cl.org != "" {
			orgs = []string{cl.org}
		}
		if err := p.issue(cl.name, cl.cn, orgs); err != nil {
			return err
		}
	}
	for _, node := range c.Nodes {
		// Client (Node authorizer) and serving certificate of the kubelet.
		hosts := []string{node.Addr.String(), node.Name}
		if node.Addr6.IsValid() {
			hosts = append(hosts, node.Addr6.String())
		}
		if err := p.issue(node.Name, "system:node:"+node.Name, []string{"system:nodes"}, hosts...); err != nil {
			return err
		}
	}
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	for _, name := range []string{"admin", "controller-manager", "scheduler", "kube-proxy"} {
		if _, err := p.kubeconfig(name, c.apiServer()); err != nil {
			return err
		}
	}
	for _, node := range c.Nodes {
		if _, err := p.kubeconfig(node.Name, c.apiServer()); err != nil {
			return err
		}
	}
	c.admin = p.path("admin.kubeconfig")
	return nil
}

func (c *Cluster) startControlPlane(t *testing.T) {
	t.Helper()
	p := c.pki
	cp := c.CP.Addr.String()
	etcdDir := filepath.Join(c.dir, "etcd")
	c.CP.Start(t, filepath.Join(c.bins.etcd, "etcd"), []string{
		"--name", "e2e", "--data-dir", etcdDir,
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e2e=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level", "warn",
	}, nil)
	c.CP.Start(t, c.bins.kube("kube-apiserver"), []string{
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", cp, "--advertise-address", cp, "--secure-port", fmt.Sprint(apiPort),
		"--tls-cert-file", p.path("apiserver.crt"), "--tls-private-key-file", p.path("apiserver.key"),
		"--client-ca-file", p.path("ca.crt"),
		"--kubelet-client-certificate", p.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key", p.path("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority", p.path("ca.crt"),
		"--kubelet-preferred-address-types", "InternalIP,Hostname",
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", p.path("sa.pub"), "--service-account-signing-key-file", p.path("sa.key"),
		"--service-cluster-ip-range", c.serviceCIDRs(),
		"--authorization-mode", "Node,RBAC", "--allow-privileged=true",
		"--enable-priority-and-fairness=false",
	}, nil)
	c.eventually(t, 90*time.Second, func() error {
		_, err := c.Kubectl(context.Background(), "", "get", "--raw", "/readyz")
		return err
	})
	common := []string{"--bind-address", "127.0.0.1", "--leader-elect=false"}
	c.CP.Start(t, c.bins.kube("kube-controller-manager"), append([]string{
		"--kubeconfig", p.path("controller-manager.kubeconfig"),
		"--authentication-kubeconfig", p.path("controller-manager.kubeconfig"),
		"--authorization-kubeconfig", p.path("controller-manager.kubeconfig"),
		"--service-account-private-key-file", p.path("sa.key"), "--root-ca-file", p.path("ca.crt"),
		"--use-service-account-credentials",
		// Pod ranges are the CNI's business (mesh's IPAM), not the node IPAM controller's.
		"--controllers", "*,-nodeipam",
		"--service-cluster-ip-range", c.serviceCIDRs(),
	}, common...), nil)
	c.CP.Start(t, c.bins.kube("kube-scheduler"), append([]string{
		"--kubeconfig", p.path("scheduler.kubeconfig"),
		"--authentication-kubeconfig", p.path("scheduler.kubeconfig"),
		"--authorization-kubeconfig", p.path("scheduler.kubeconfig"),
	}, common...), nil)
	// The service account controller and the root CA publisher are up once
	// the default namespace has both.
	c.eventually(t, 90*time.Second, func() error {
		_, err := c.Kubectl(context.Background(), "", "-n", "default", "get", "serviceaccount/default", "configmap/kube-root-ca.crt")
		return err
	})
}

// startNode prepares a node host, starts its containerd, imports the
// images, and starts its kubelet and kube-proxy.
func (c *Cluster) startNode(t *testing.T, node *Node, images []string) {
	t.Helper()
	c.prepareNode(t, node)
	c.startContainerd(t, node, images)
	c.startKubelet(t, node)
	c.startKubeProxy(t, node)
}

// prepareNode sets a node host up: its cgroup root, the cgroup mounts and
// private directories in its mount namespace, forwarding, and the CNI
// plugins (loopback always, as containerd needs it; the rest in bridge
// mode).
func (c *Cluster) prepareNode(t testing.TB, node *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := filepath.Join(c.dir, node.Name)
	for _, d := range nodeDirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("failed to create mount point %s: %v", d, err)
		}
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := createCgroupRoot(c.cgs, node.cgroupRoot); err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	// testnet gives each host a fresh sysfs, without the cgroup mounts.
	script.WriteString(remountScript(c.cgs))
	for _, d := range nodeDirs {
		fmt.Fprintf(&script, "mount --bind %q %q\n", filepath.Join(root, d), d)
	}
	script.WriteString("mkdir -p /etc/cni/net.d /opt/cni/bin /run/containerd\n")
	// Routing pods, and bridged pod-to-service traffic through kube-proxy.
	script.WriteString("echo 1 > /proc/sys/net/ipv4/ip_forward\n")
	script.WriteString("[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables\n")
	if node.Addr6.IsValid() {
		// What a dual-stack node needs besides (kubeadm's preflight checks
		// it too): IPv6 forwarding, which the mesh pod cannot turn on
		// itself (/proc/sys is read-only in its container), and the
		// node's IPv6 address, which the kubelet's --node-ip must find on
		// an interface. nodad: usable at once.
		script.WriteString("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding\n")
		script.WriteString("[ ! -e /proc/sys/net/bridge/bridge-nf-call-ip6tables ] || echo 1 > /proc/sys/net/bridge/bridge-nf-call-ip6tables\n")
		fmt.Fprintf(&script, "ip -6 addr add %s dev eth0 nodad\n", underlay6Addr(node.Host))
	}
	if out, err := node.Run(ctx, "sh", "-c", script.String()); err != nil {
		t.Fatalf("failed to prepare %s: %v\n%s", node.Name, err, out)
	}

	// containerd always needs loopback, and nodes have portmap as
	// distributions install it with the kubelet (mesh chains it when it is
	// there: hostPort); bridge mode needs the rest.
	plugins := []string{"loopback", "portmap"}
	if c.opts.CNI == "bridge" {
		plugins = append(plugins, "bridge", "host-local")
		ranges, routes := fmt.Sprintf(`[{"subnet": %q}]`, node.PodCIDR), `{"dst": "0.0.0.0/0"}`
		if node.PodCIDR6.IsValid() {
			ranges += fmt.Sprintf(`, [{"subnet": %q}]`, node.PodCIDR6)
			routes += `, {"dst": "::/0"}`
		}
		conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "e2e-bridge", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [%s], "routes": [%s]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
`, ranges, routes)
		if err := os.WriteFile(filepath.Join(node.Path("/etc/cni/net.d"), "10-e2e-bridge.conflist"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if c.bins.cni == "" {
		plugins = nil
	}
	for _, p := range plugins {
		if err := node.CopyFile(filepath.Join(c.bins.cni, p), filepath.Join("/opt/cni/bin", p), 0o755); err != nil {
			t.Fatal(err)
		}
	}

}

// startContainerd starts the node's containerd (state and socket in the
// host's private /run) and imports the image tarballs.
func (c *Cluster) startContainerd(t testing.TB, node *Node, images []string) {
	t.Helper()
	root := filepath.Join(c.dir, node.Name)
	ctrdConf := filepath.Join(root, "containerd.toml")
	writeFile(t, ctrdConf, fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = "/opt/containerd"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # No CAP_SYS_RESOURCE on some CI machines: runc then cannot lower
  # oom_score_adj, and every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
`, containerdSock, pauseImage))
	node.containerd = node.Start(t, "containerd", []string{"--config", ctrdConf}, nil)
	c.eventually(t, 30*time.Second, func() error {
		_, err := node.Run(context.Background(), "ctr", "version")
		return err
	})
	for _, img := range images {
		ictx, icancel := context.WithTimeout(context.Background(), importTimeout)
		out, err := node.Run(ictx, "ctr", "-n", "k8s.io", "images", "import", img)
		icancel()
		if err != nil {
			t.Fatalf("failed to import %s into %s: %v\n%s", img, node.Name, err, out)
		}
	}

}

// startKubelet starts the node's kubelet, in its own cgroup root.
func (c *Cluster) startKubelet(t testing.TB, node *Node) {
	t.Helper()
	root := filepath.Join(c.dir, node.Name)
	p := c.pki
	kubeletConf := filepath.Join(root, "kubelet.yaml")
	writeFile(t, kubeletConf, fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
# Each kubelet of the machine gets its own cgroup subtree.
cgroupRoot: %s
failCgroupV1: false
failSwapOn: false
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: %s}}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
staticPodPath: /etc/kubernetes/manifests
clusterDomain: cluster.local
clusterDNS: [%s]
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, containerdSock, node.cgroupRoot, p.path(node.Name+".crt"), p.path(node.Name+".key"), p.path("ca.crt"), clusterDNS))
	if err := os.MkdirAll(filepath.Join(root, "/etc/kubernetes/manifests"), 0o755); err != nil {
		t.Fatal(err)
	}
	nodeIP := node.Addr.String()
	if node.Addr6.IsValid() {
		// Both families: the Node's InternalIPs, IPv4 first (the primary
		// family, as the first Service range's).
		nodeIP += "," + node.Addr6.String()
	}
	node.kubelet = node.Start(t, c.bins.kube("kubelet"), []string{
		"--config", kubeletConf, "--kubeconfig", p.path(node.Name + ".kubeconfig"),
		"--hostname-override", node.Name, "--node-ip", nodeIP,
	}, nil)

}

// startKubeProxy starts the node's kube-proxy in Options.ProxyMode.
func (c *Cluster) startKubeProxy(t testing.TB, node *Node) {
	t.Helper()
	root := filepath.Join(c.dir, node.Name)
	p := c.pki
	clusterCIDR := meshCIDR
	if c.opts.CNI == "bridge" {
		clusterCIDR = bridgeCIDR
	}
	if c.opts.DualStack {
		// Both families: kube-proxy then programs IPv6 Services too.
		clusterCIDR += "," + c.podCIDR6()
	}
	proxyConf := filepath.Join(root, "kube-proxy.yaml")
	writeFile(t, proxyConf, fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
hostnameOverride: %s
mode: %s
clusterCIDR: %s
# Leave the machine-wide conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
`, p.path("kube-proxy.kubeconfig"), node.Name, c.opts.ProxyMode, clusterCIDR))
	node.kubeProxy = node.Start(t, c.bins.kube("kube-proxy"), []string{"--config", proxyConf}, nil)
}

// checkProxyMode checks that every node's kube-proxy runs in
// Options.ProxyMode, as it reports on its metrics address: a variant run
// in iptables mode must not silently test nftables mode.
func (c *Cluster) checkProxyMode(t *testing.T) {
	t.Helper()
	for _, node := range c.Nodes {
		c.eventually(t, 60*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := node.Run(ctx, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:10249/proxyMode")
			if err != nil {
				return fmt.Errorf("kube-proxy mode of %s: %w: %s", node.Name, err, out)
			}
			if got := strings.TrimSpace(out); got != c.opts.ProxyMode {
				return fmt.Errorf("kube-proxy of %s runs in mode %q, want %q", node.Name, got, c.opts.ProxyMode)
			}
			return nil
		})
	}
	t.Logf("kube-proxy in %s mode on %d nodes", c.opts.ProxyMode, len(c.Nodes))
}

// routePodCIDRs routes each node's pod range to it from the other nodes: in
// bridge mode, the stand-in for what mesh's overlay does.
func (c *Cluster) routePodCIDRs(t *testing.T) {
	t.Helper()
	for _, from := range c.Nodes {
		for _, to := range c.Nodes {
			if from == to {
				continue
			}
			routes := [][2]string{{to.PodCIDR.String(), to.Addr.String()}}
			if to.PodCIDR6.IsValid() {
				routes = append(routes, [2]string{to.PodCIDR6.String(), to.Addr6.String()})
			}
			for _, r := range routes {
				if out, err := from.Run(context.Background(), "ip", "route", "replace", r[0], "via", r[1]); err != nil {
					t.Fatalf("route %s via %s on %s: %v\n%s", r[0], r[1], from.Name, err, out)
				}
			}
		}
	}
}

// WaitNodesReady waits until every node is Ready.
func (c *Cluster) WaitNodesReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "wait", "--for=condition=Ready", "node", "--all", "--timeout="+timeout.String()); err != nil {
		out2, _ := c.Kubectl(context.Background(), "", "describe", "nodes")
		t.Fatalf("nodes not ready: %v\n%s\n%s", err, out, tailLines(out2, 80))
	}
}

// Kubectl runs kubectl as the cluster admin in the control-plane host, with
// stdin as input, and returns its combined output. Without a deadline on
// ctx it is bounded by 2 minutes.
func (c *Cluster) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	cmd := c.CP.Exec(ctx, c.bins.kube("kubectl"), append([]string{"--kubeconfig", c.admin}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// MustKubectl is Kubectl that fails t on error.
func (c *Cluster) MustKubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := c.Kubectl(context.Background(), stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// eventually is testnet.Eventually with a 1s interval.
func (c *Cluster) eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	testnet.Eventually(t, timeout, time.Second, cond)
}

// StopNode stops a node's kubelet and kube-proxy, and kills every process of
// the host (its containerd and the host-network pods such as mesh) as a
// power failure would. Pods in their own network namespaces are killed by
// teardown.
func (c *Cluster) StopNode(t *testing.T, node *Node) {
	t.Helper()
	for _, p := range []*testnet.Proc{node.kubeProxy, node.kubelet} {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Logf("stopping %s: %v", p, err)
		}
	}
	if err := node.KillAll(); err != nil {
		t.Logf("killing the processes of %s: %v", node.Name, err)
	}
}

// teardown stops what Up started in an order that leaves nothing behind:
// kube-proxy and kubelet first (so nothing restarts pods), then containerd,
// then any pod process left, by cgroup; the cgroups are removed. testnet's
// cleanup then kills the rest of the hosts' processes and removes the
// namespaces, with every mount made inside them, and the run directory.
func (c *Cluster) teardown(t testing.TB) {
	c.stopNodes()
	for _, node := range c.Nodes {
		if err := removeCgroupRoot(c.cgs, node.cgroupRoot, 30*time.Second); err != nil {
			t.Errorf("teardown of %s: %v", node.Name, err)
		}
	}
}

// stopNodes stops the kube-proxies, kubelets and containerds, in that order.
func (c *Cluster) stopNodes() {
	for _, node := range c.Nodes {
		for _, p := range []*testnet.Proc{node.kubeProxy, node.kubelet, node.containerd} {
			if p != nil {
				_ = p.Stop(10 * time.Second)
			}
		}
	}
}

// dumpState logs what helps to understand a failure.
func (c *Cluster) dumpState(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"-n", meshNamespace, "logs", "-l", "app.kubernetes.io/name=mesh", "--prefix", "--tail=40"},
	} {
		out, err := c.Kubectl(ctx, "", args...)
		if err != nil {
			t.Logf("kubectl %s: %v", strings.Join(args, " "), err)
			continue
		}
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), tailLines(out, 60))
	}
}

func writeFile(t testing.TB, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
