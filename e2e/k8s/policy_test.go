//go:build e2ek8s

package k8se2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkNetworkPolicies applies NetworkPolicies and checks each by real
// connections between pods on the same node and on different nodes:
// default deny ingress, allow from a namespace, allow to a named port, and
// egress deny with an ipBlock except.
func checkNetworkPolicies(t *testing.T, c *Cluster, pods []testPod) {
	t.Helper()
	web1, web2 := pods[0], pods[1] // on node 1 and node 2
	// local: next to web1 on node 1; friend: on node 2 in a labelled namespace.
	c.MustKubectl(t, `apiVersion: v1
kind: Namespace
metadata: {name: friends, labels: {team: friends}}
`, "apply", "-f", "-")
	local := startHTTPPod(t, c, "local", testNamespace, web1.Node)
	friend := startHTTPPod(t, c, "friend", "friends", web2.Node)

	// 1. Default deny ingress for web1.
	applyPolicy(t, c, testNamespace, `
metadata: {name: web1-deny}
spec: {podSelector: {matchLabels: {app: web1}}, policyTypes: [Ingress]}`)
	expectHTTP(t, c, web2, web1, false, "default deny, across nodes")
	expectHTTP(t, c, local, web1, false, "default deny, same node")
	expectHTTP(t, c, web1, web2, true, "default deny ingress leaves egress alone")

	// 2. Allow from a namespace.
	applyPolicy(t, c, testNamespace, `
metadata: {name: web1-from-friends}
spec:
  podSelector: {matchLabels: {app: web1}}
  policyTypes: [Ingress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: friends}}}]}]`)
	expectHTTP(t, c, friend, web1, true, "allowed namespace, across nodes")
	expectHTTP(t, c, web2, web1, false, "other namespace still denied")

	// 3. Allow to a named port from a pod on the same node.
	applyPolicy(t, c, testNamespace, `
metadata: {name: web1-http-from-local}
spec:
  podSelector: {matchLabels: {app: web1}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: local}}}], ports: [{port: http, protocol: TCP}]}]`)
	expectHTTP(t, c, local, web1, true, "named port, same node")
	if err := ping(c, local, web1); err == nil {
		t.Fatalf("ICMP from local to web1 passes although only the http port is allowed")
	}

	// 4. Egress of web2 to the cluster range except web1.
	applyPolicy(t, c, testNamespace, `
metadata: {name: web2-egress}
spec:
  podSelector: {matchLabels: {app: web2}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.32.0.0/12, except: [`+web1.IP+`/32]}}]}]`)
	expectHTTP(t, c, web2, web1, false, "egress ipBlock except")
	expectHTTP(t, c, web2, local, true, "egress ipBlock, the rest of the range")

	meshBin, err := filepath.Abs(setting("MESH_E2E_MESH_BIN", "../../bin/mesh"))
	if err != nil {
		t.Fatal(err)
	}
	node := c.Nodes[0]
	out, err := node.Run(context.Background(), meshBin, "status", "policy")
	if err != nil || !strings.Contains(out, "e2e/web1-deny") || !strings.Contains(out, "e2e/web1") {
		t.Fatalf("mesh status policy on %s: %v\n%s", node.Name, err, out)
	}
	t.Logf("mesh status policy on %s:\n%s", node.Name, out)
	c.MustKubectl(t, "", "-n", testNamespace, "delete", "networkpolicy", "--all")
	expectHTTP(t, c, web2, web1, true, "policies deleted")
}

func applyPolicy(t *testing.T, c *Cluster, ns, body string) {
	t.Helper()
	c.MustKubectl(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy"+strings.Replace(body, "metadata: {name: ", "metadata: {namespace: "+ns+", name: ", 1)+"\n", "apply", "-f", "-")
}

// startHTTPPod runs a busybox httpd pod on node and waits for it.
func startHTTPPod(t *testing.T, c *Cluster, name, ns, node string) testPod {
	t.Helper()
	c.MustKubectl(t, httpPodYAML(name, ns, node), "apply", "-f", "-")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(ctx, "", "-n", ns, "wait", "--for=condition=Ready", "pod", name, "--timeout=100s"); err != nil {
		t.Fatalf("pod %s not ready: %v\n%s", name, err, out)
	}
	ip := strings.TrimSpace(c.MustKubectl(t, "", "-n", ns, "get", "pod", name, "-o", "jsonpath={.status.podIP}"))
	return testPod{Name: ns + "/" + name, Node: node, IP: ip}
}

// httpPodYAML is a busybox pod on node serving its own name over HTTP on
// port 8080, named "http" for policies that select ports by name.
func httpPodYAML(name, ns, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "mkdir -p /tmp/www && echo %s > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
`, name, ns, name, node, busyboxImage, name)
}

// execIn runs a command in a pod named "ns/name" or, without a slash, in
// the test namespace.
func execIn(ctx context.Context, c *Cluster, pod string, cmd ...string) (string, error) {
	ns, name, ok := strings.Cut(pod, "/")
	if !ok {
		ns, name = testNamespace, pod
	}
	return c.Kubectl(ctx, "", append([]string{"-n", ns, "exec", name, "--"}, cmd...)...)
}

func httpOK(c *Cluster, from, to testPod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := execIn(ctx, c, from.Name, "timeout", "3", "wget", "-q", "-O", "-", "http://"+to.IP+":8080/")
	return err
}

func ping(c *Cluster, from, to testPod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := execIn(ctx, c, from.Name, "ping", "-c", "1", "-W", "2", to.IP)
	return err
}

// expectHTTP waits until from reaching to over HTTP matches allowed (the
// controller applies changes within a moment), then checks it twice more
// so a flapping rule does not pass.
func expectHTTP(t *testing.T, c *Cluster, from, to testPod, allowed bool, what string) {
	t.Helper()
	check := func() error {
		err := httpOK(c, from, to)
		switch {
		case allowed && err != nil:
			return fmt.Errorf("%s: %s -> %s denied, want allowed: %v", what, from.Name, to.Name, err)
		case !allowed && err == nil:
			return fmt.Errorf("%s: %s -> %s allowed, want denied", what, from.Name, to.Name)
		}
		return nil
	}
	c.eventually(t, 45*time.Second, check)
	for range 2 {
		if err := check(); err != nil {
			t.Fatal(err)
		}
	}
	verdict := "denied"
	if allowed {
		verdict = "allowed"
	}
	t.Logf("policy %s: %s (%s) -> %s (%s): %s", what, from.Name, from.Node, to.Name, to.Node, verdict)
}
