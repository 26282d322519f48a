//go:build e2ek8s

package k8se2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// conformanceFocus selects the upstream sig-network specs that certified
// clusters must pass.
const conformanceFocus = `\[sig-network\].*\[Conformance\]`

// conformanceSkips are the sig-network [Conformance] specs that `make
// conformance` does not run, each a regular expression on the spec's name
// with the reason; docs/kubernetes.md ("Upstream conformance") lists them
// too. A spec that fails because of mesh is fixed in mesh, never added here.
var conformanceSkips = []struct{ spec, why string }{}

// subsetSpecs are the upstream specs `make e2e-k8s` runs on every CI run:
// hairpin through a Service, pod-to-pod HTTP and UDP across the nodes, a
// Service whose endpoints are on both nodes, and DNS names of Services.
var subsetSpecs = []string{
	"[sig-network] Services should allow pods to hairpin back to themselves through services",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: udp",
	"[sig-network] Networking Granular Checks: Services should function for pod-Service: http",
	"[sig-network] DNS should provide DNS for services",
}

// subsetFocus is a focus regular expression matching exactly subsetSpecs.
func subsetFocus() string {
	alts := make([]string, len(subsetSpecs))
	for i, s := range subsetSpecs {
		alts[i] = regexp.QuoteMeta(s) + `( \[|$)`
	}
	return strings.Join(alts, "|")
}

// TestConformance runs the upstream sig-network [Conformance] specs on the
// two-node mesh cluster (`make conformance`) and fails unless every spec
// that is not in conformanceSkips passes.
func TestConformance(t *testing.T) {
	c := meshCluster(t)
	var skips []string
	for _, s := range conformanceSkips {
		skips = append(skips, s.spec)
	}
	res := c.runUpstream(t, upstreamRun{Name: "conformance", Focus: conformanceFocus, Skip: skips, Timeout: 75 * time.Minute})
	for _, n := range res.Passed {
		t.Logf("passed: %s", n)
	}
	for _, n := range res.Skipped {
		t.Logf("skipped: %s", n)
	}
	for _, n := range res.Failed {
		t.Errorf("failed: %s", n)
	}
	if len(res.Skipped) != len(conformanceSkips) {
		t.Errorf("%d specs were skipped, but conformanceSkips lists %d: a spec was skipped by the suite itself or the list is stale", len(res.Skipped), len(conformanceSkips))
	}
	t.Logf("CONFORMANCE: %s", res)
}

// meshCluster brings up the two-node cluster with mesh installed by
// mesh.yaml, the upstream suite's images and CoreDNS.
func meshCluster(t *testing.T) *Cluster {
	t.Helper()
	image := setting("MESH_E2E_IMAGE", "localhost/mesh:dev")
	c := Up(t, Options{Nodes: 2, CNI: "mesh", Images: []string{meshImageTar(t)}, Upstream: true, ProxyMode: proxyMode()})
	c.checkProxyMode(t)
	installMesh(t, c, image, true)
	c.WaitNodesReady(t, 3*time.Minute)
	c.deployCoreDNS(t)
	c.routePodsViaNode(t)
	return c
}

// checkUpstreamSubset runs subsetSpecs and fails unless each of them ran
// and passed.
func checkUpstreamSubset(t *testing.T, c *Cluster) {
	t.Helper()
	c.deployCoreDNS(t)
	c.routePodsViaNode(t)
	res := c.runUpstream(t, upstreamRun{Name: "subset", Focus: subsetFocus(), Timeout: 15 * time.Minute})
	for _, n := range res.Failed {
		t.Errorf("upstream spec failed: %s", n)
	}
	if len(res.Passed) != len(subsetSpecs) {
		t.Errorf("upstream subset: %s; want all %d passed: %q", res, len(subsetSpecs), res.Passed)
	}
}
