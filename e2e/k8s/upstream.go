//go:build e2ek8s

package k8se2e

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/vmtest"
	"github.com/meshnet/mesh/tools/mkimage/ociimage"
)

// The upstream Kubernetes e2e suite (build.sh's e2e.test, built from
// k8s.io/kubernetes/test/e2e at the cluster's version) runs against the
// cluster with images built here, never pulled: KUBE_TEST_REPO_LIST renames
// every registry the suite knows to a name under "localhost", so a spec
// whose image is missing fails to pull from the loopback instead of
// reaching out.
var repoList = map[string]string{
	"gcAuthenticatedRegistry":  "localhost/e2e-auth",
	"promoterE2eRegistry":      "localhost/e2e",
	"buildImageRegistry":       "localhost/e2e-build",
	"invalidRegistry":          "localhost/e2e-invalid",
	"gcEtcdRegistry":           "localhost/k8s",
	"gcRegistry":               "localhost/k8s",
	"sigStorageRegistry":       "localhost/e2e-storage",
	"privateRegistry":          "localhost/e2e-private",
	"dockerLibraryRegistry":    "localhost/library",
	"cloudProviderGcpRegistry": "localhost/e2e-gcp",
}

// toolsImage is one image standing in for the suite's agnhost,
// jessie-dnsutils and busybox images: agnhost (built from the same module
// as e2e.test) as the entrypoint and "pause" as its arguments, porter's
// test certificate in /, as in upstream's agnhost image, plus
// busybox's applets, and dig, nslookup, getent, curl and OpenBSD's nc
// (the specs use its -v, -t and -u, which busybox's nc lacks) from this
// machine's Debian packages with their libraries. The network specs give
// every jessie-dnsutils and busybox container a command, so the entrypoint
// does not matter for them.
const toolsImage = "localhost/mesh-e2e-tools:local"

// toolsAliases are the names the suite uses for toolsImage, with the tags
// of test/utils/image/manifest.go at build.sh's K8S_VERSION.
var toolsAliases = []string{
	repoList["promoterE2eRegistry"] + "/agnhost:2.56",
	repoList["promoterE2eRegistry"] + "/jessie-dnsutils:1.7",
	repoList["promoterE2eRegistry"] + "/busybox:1.37.0-1",
}

// pauseAliases are the suite's names for the pause image.
var pauseAliases = []string{repoList["gcRegistry"] + "/pause:3.10.1"}

// corednsImage is CoreDNS built by build.sh, named as kubeadm names it
// (under the renamed registry).
const corednsImage = "localhost/k8s/coredns/coredns:v1.12.1"

// toolsPrograms are the dynamically linked programs of toolsImage, by path
// in the image, from this machine (Debian packages bind9-dnsutils,
// libc-bin, curl, netcat-openbsd, dash). The shell is dash: Debian's static
// busybox shell runs its own applets before anything on PATH, so `sh -c
// "nc ..."` would never reach OpenBSD's nc.
var toolsPrograms = map[string]string{
	"/bin/sh":           "/usr/bin/dash",
	"/usr/bin/dig":      "/usr/bin/dig",
	"/usr/bin/nslookup": "/usr/bin/nslookup",
	"/usr/bin/getent":   "/usr/bin/getent",
	"/usr/bin/curl":     "/usr/bin/curl",
	"/usr/bin/nc":       "/usr/bin/nc.openbsd",
}

// buildUpstreamImages writes the tools and CoreDNS image tarballs into dir.
func buildUpstreamImages(ctx context.Context, dir string, bins binaries) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var sources []string
	for _, p := range toolsPrograms {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s is needed for the e2e tools image (scripts/deps.sh k8s installs it): %w", p, err)
		}
		sources = append(sources, p)
	}
	sort.Strings(sources)
	if err := requireStatic(busyboxPath); err != nil {
		return nil, err
	}
	libs, err := vmtest.SharedLibs(ctx, sources...)
	if err != nil {
		return nil, err
	}
	nsswitch := filepath.Join(dir, "nsswitch.conf")
	if err := os.WriteFile(nsswitch, []byte("hosts: files dns\n"), 0o644); err != nil {
		return nil, err
	}
	applets, err := exec.CommandContext(ctx, busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	entries := []ociimage.Entry{
		{Path: "/agnhost", Source: filepath.Join(bins.e2e, "agnhost")},
		{Path: "/agnhost-2", Link: "agnhost"},
		{Path: "/localhost.crt", Source: filepath.Join(bins.e2e, "localhost.crt"), Mode: 0o644},
		{Path: "/localhost.key", Source: filepath.Join(bins.e2e, "localhost.key"), Mode: 0o644},
		{Path: "/uploads", Dir: true},
		{Path: "/bin/busybox", Source: busyboxPath},
		{Path: "/etc/nsswitch.conf", Source: nsswitch, Mode: 0o644},
		{Path: "/tmp", Dir: true}, {Path: "/proc", Dir: true}, {Path: "/sys", Dir: true},
		{Path: "/dev", Dir: true}, {Path: "/results", Dir: true},
	}
	for _, a := range strings.Fields(string(applets)) {
		if a == "busybox" || toolsPrograms["/usr/bin/"+a] != "" || toolsPrograms["/bin/"+a] != "" {
			continue
		}
		entries = append(entries, ociimage.Entry{Path: "/bin/" + a, Link: "busybox"})
	}
	for path, src := range toolsPrograms {
		entries = append(entries, ociimage.Entry{Path: path, Source: src})
	}
	for _, l := range libs {
		entries = append(entries, ociimage.Entry{Path: l, Source: l})
	}
	images := []struct {
		name string
		spec ociimage.Spec
	}{
		{toolsImage, ociimage.Spec{Entries: entries, Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
			Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}},
		{corednsImage, ociimage.Spec{Entrypoint: []string{"/coredns"}, Entries: []ociimage.Entry{
			{Path: "/coredns", Source: filepath.Join(bins.coredns, "coredns")},
			{Path: "/tmp", Dir: true}, {Path: "/etc", Dir: true},
		}}},
	}
	var files []string
	for _, im := range images {
		img, err := ociimage.Build(im.spec)
		if err != nil {
			return nil, fmt.Errorf("failed to build image %s: %w", im.name, err)
		}
		f := filepath.Join(dir, strings.NewReplacer(":", "_", "/", "_").Replace(im.name)+".tar")
		if err := ociimage.WriteFile(f, im.name, img); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// tagUpstreamAliases gives the imported images the names the suite uses.
func (c *Cluster) tagUpstreamAliases(t *testing.T) {
	t.Helper()
	for _, node := range c.Nodes {
		for src, dsts := range map[string][]string{toolsImage: toolsAliases, pauseImage: pauseAliases} {
			args := append([]string{"-n", "k8s.io", "images", "tag", "--force", src}, dsts...)
			if out, err := node.Run(context.Background(), "ctr", args...); err != nil {
				t.Fatalf("tagging %s on %s: %v\n%s", src, node.Name, err, out)
			}
		}
	}
}

// corednsManifest deploys CoreDNS as kubeadm does: Service kube-dns at the
// tenth address of the Service range (the kubelets' clusterDNS), two
// replicas, the kubernetes plugin for cluster.local and the reverse zones.
// Unlike kubeadm's Corefile it has no forward (nor loop, which only guards
// forward): names outside the cluster get no answer instead of reaching a
// resolver beyond the test's own hosts.
const corednsManifest = `apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
           lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }
        prometheus :9153
        cache 30 {
           disable success cluster.local
           disable denial cluster.local
        }
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kube-dns}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      dnsPolicy: Default
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector: {matchExpressions: [{key: k8s-app, operator: In, values: [kube-dns]}]}
              topologyKey: kubernetes.io/hostname
      containers:
      - name: coredns
        image: %s
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        resources: {limits: {memory: 170Mi}, requests: {cpu: 100m, memory: 70Mi}}
        volumeMounts: [{name: config-volume, mountPath: /etc/coredns, readOnly: true}]
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        - {containerPort: 9153, name: metrics, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          readOnlyRootFilesystem: true
        livenessProbe:
          httpGet: {path: /health, port: 8080}
          initialDelaySeconds: 60
          timeoutSeconds: 5
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
      volumes:
      - name: config-volume
        configMap: {name: coredns, items: [{key: Corefile, path: Corefile}]}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: %s
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
`

// clusterDNS is the kube-dns Service's address and the kubelets' clusterDNS.
const clusterDNS = "10.96.0.10"

// deployCoreDNS applies corednsManifest and waits until CoreDNS is ready.
func (c *Cluster) deployCoreDNS(t *testing.T) {
	t.Helper()
	c.MustKubectl(t, fmt.Sprintf(corednsManifest, corednsImage, clusterDNS), "apply", "-f", "-")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "-n", "kube-system", "rollout", "status", "deploy/coredns", "--timeout=3m"); err != nil {
		logs, _ := c.Kubectl(context.Background(), "", "-n", "kube-system", "logs", "-l", "k8s-app=kube-dns", "--tail=30")
		t.Fatalf("CoreDNS not ready: %v\n%s\nlogs:\n%s", err, out, logs)
	}
	t.Log("CoreDNS ready behind Service kube-dns " + clusterDNS)
}

// routePodsViaNode routes the pod range on the control-plane host via the
// first node. The control plane of this test cluster is a host of its own
// without kubelet or mesh (on a kubeadm cluster it is a node like the
// others); the suite needs the API server to reach pods (its pod and
// Service proxy, "Proxy version v1" specs), which the node, as for any
// host outside the mesh that routes through it, forwards into the overlay.
func (c *Cluster) routePodsViaNode(t *testing.T) {
	t.Helper()
	gw := c.Nodes[0]
	if out, err := c.CP.Run(context.Background(), "ip", "route", "replace", meshCIDR, "via", gw.Addr.String()); err != nil {
		t.Fatalf("route %s via %s on %s: %v\n%s", meshCIDR, gw.Addr, c.CP.Name, err, out)
	}
}

// upstreamRun is one run of e2e.test.
type upstreamRun struct {
	Name  string   // for the log and report files
	Focus string   // --ginkgo.focus
	Skip  []string // --ginkgo.skip, one alternative each
	// Timeout bounds the whole run.
	Timeout time.Duration
}

// upstreamResult counts the specs of a run that match its focus.
type upstreamResult struct {
	Passed, Failed, Skipped []string
	Took                    time.Duration
}

func (r upstreamResult) String() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped in %v", len(r.Passed), len(r.Failed), len(r.Skipped), r.Took.Round(time.Second))
}

// runUpstream runs e2e.test on the control-plane host against the cluster
// and returns the outcome of the specs its focus selects. The suite's log
// is kept next to the JUnit report in the cluster directory, and its tail
// is logged when a spec failed.
func (c *Cluster) runUpstream(t *testing.T, run upstreamRun) upstreamResult {
	t.Helper()
	if c.bins.e2e == "" {
		t.Fatal("e2e.test was not built: Up needs Options.Upstream")
	}
	dir := filepath.Join(c.dir, "upstream-"+run.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var repo strings.Builder
	keys := make([]string, 0, len(repoList))
	for k := range repoList {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&repo, "%s: %s\n", k, repoList[k])
	}
	repoFile := filepath.Join(dir, "repo-list.yaml")
	writeFile(t, repoFile, repo.String())
	args := []string{
		"--kubeconfig", c.admin, "--provider", "skeleton",
		"--kubectl-path", c.bins.kube("kubectl"),
		"--report-dir", dir, "--disable-log-dump",
		"--ginkgo.focus", run.Focus,
		"--ginkgo.no-color", "--ginkgo.timeout", run.Timeout.String(),
		"--ginkgo.poll-progress-after", "5m",
	}
	if len(run.Skip) > 0 {
		args = append(args, "--ginkgo.skip", strings.Join(run.Skip, "|"))
	}
	logFile := filepath.Join(dir, "e2e.log")
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), run.Timeout+2*time.Minute)
	defer cancel()
	cmd := c.CP.Exec(ctx, filepath.Join(c.bins.e2e, "e2e.test"), args...)
	cmd.Env = append(os.Environ(), "KUBE_TEST_REPO_LIST="+repoFile)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = lf, lf
	start := time.Now()
	runErr := cmd.Run()
	res, err := readJUnit(filepath.Join(dir, "junit_01.xml"), regexp.MustCompile(run.Focus))
	res.Took = time.Since(start)
	// The cluster directory goes with the cluster: the log and report are
	// kept in the build directory.
	keep, _ := filepath.Abs(setting("MESH_E2E_LOG_DIR", "../../bin"))
	for _, f := range []string{"e2e.log", "junit_01.xml"} {
		data, rerr := os.ReadFile(filepath.Join(dir, f))
		if rerr == nil && os.MkdirAll(keep, 0o755) == nil {
			kept := filepath.Join(keep, "upstream-"+run.Name+"-"+f)
			if os.WriteFile(kept, data, 0o644) == nil && f == "e2e.log" {
				logFile = kept
			}
		}
	}
	if err != nil {
		log, _ := os.ReadFile(logFile)
		t.Fatalf("e2e.test %s: %v (exit: %v)\n%s", run.Name, err, runErr, tailLines(string(log), 80))
	}
	t.Logf("upstream %s: %s (log %s)", run.Name, res, logFile)
	if len(res.Failed) > 0 {
		log, _ := os.ReadFile(logFile)
		t.Logf("e2e.test log tail:\n%s", tailLines(string(log), 150))
	}
	return res
}

// junitSuites is the part of ginkgo's JUnit report that counts.
type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Status  string    `xml:"status,attr"`
			Skipped *struct{} `xml:"skipped"`
			Failure *struct{} `xml:"failure"`
			Error   *struct{} `xml:"error"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// readJUnit counts the specs of a report whose name matches focus (the
// report lists every spec of the suite, the unfocused ones as skipped).
func readJUnit(file string, focus *regexp.Regexp) (upstreamResult, error) {
	var res upstreamResult
	data, err := os.ReadFile(file)
	if err != nil {
		return res, fmt.Errorf("reading the JUnit report: %w", err)
	}
	var s junitSuites
	if err := xml.Unmarshal(data, &s); err != nil {
		return res, fmt.Errorf("parsing the JUnit report %s: %w", file, err)
	}
	for _, suite := range s.Suites {
		for _, tc := range suite.Cases {
			if !focus.MatchString(tc.Name) {
				continue
			}
			switch {
			case tc.Failure != nil || tc.Error != nil || tc.Status == "failed" || tc.Status == "panicked" || tc.Status == "timedout":
				res.Failed = append(res.Failed, tc.Name)
			case tc.Skipped != nil || tc.Status == "skipped" || tc.Status == "pending":
				res.Skipped = append(res.Skipped, tc.Name)
			default:
				res.Passed = append(res.Passed, tc.Name)
			}
		}
	}
	if len(res.Passed)+len(res.Failed)+len(res.Skipped) == 0 {
		return res, fmt.Errorf("no spec in %s matches %q", file, focus)
	}
	return res, nil
}
