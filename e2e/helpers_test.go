package e2e

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

const testPassword = meshtest.Password

// node is a mesh daemon on a simulated host.
type node = meshtest.Node

var (
	meshBinary        = meshtest.BuildMesh
	launch            = meshtest.Launch
	launchWithEnv     = meshtest.LaunchWithEnv
	dumpLogsOnFailure = meshtest.DumpLogsOnFailure
	waitCNIInstalled  = meshtest.WaitCNIInstalled
)

// cniMesh starts a mesh of hosts nodes and waits until each has installed
// its CNI plugin: the setup of the pod tests. The context is for the test's
// commands; it ends after timeout or with the test.
func cniMesh(t *testing.T, hosts int, timeout time.Duration, extra ...string) (*testnet.Net, []*node, context.Context) {
	t.Helper()
	return cniMeshFlags(t, hosts, timeout, func(int) []string { return extra })
}

// cniMeshFlags is cniMesh where host i (from 0) is launched with flags(i).
func cniMeshFlags(t *testing.T, hosts int, timeout time.Duration, flags func(i int) []string) (*testnet.Net, []*node, context.Context) {
	t.Helper()
	return cniMeshOn(t, testnet.Options{Hosts: hosts}, timeout, flags)
}

// cniMeshOn is cniMeshFlags on a test network of opts (see startMeshOn).
func cniMeshOn(t *testing.T, opts testnet.Options, timeout time.Duration, flags func(i int) []string) (*testnet.Net, []*node, context.Context) {
	t.Helper()
	tn, nodes := startMeshOn(t, opts, flags)
	for _, n := range nodes {
		waitCNIInstalled(t, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return tn, nodes, ctx
}

// cniNode is cniMesh of one node.
func cniNode(t *testing.T, timeout time.Duration, extra ...string) (*node, context.Context) {
	t.Helper()
	_, nodes, ctx := cniMesh(t, 1, timeout, extra...)
	return nodes[0], ctx
}

// peerStates maps peer name to state as n sees it.
func peerStates(n *node) (map[string]string, error) {
	st, err := n.Status()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range st.Peers {
		out[p.Name] = string(p.State)
	}
	return out, nil
}

// expectStates waits until every node in nodes sees exactly want (name to
// state) for the names in want; names not in want are ignored unless
// exact is set, in which case they must be absent.
func expectStates(t *testing.T, timeout time.Duration, nodes []*node, want map[string]string, exact bool) {
	t.Helper()
	testnet.Eventually(t, timeout, 250*time.Millisecond, func() error {
		for _, n := range nodes {
			got, err := peerStates(n)
			if err != nil {
				return err
			}
			for name, state := range want {
				if got[name] != state {
					return fmt.Errorf("%s sees %s as %q, want %q (all: %v)", n.Host.Name, name, got[name], state, got)
				}
			}
			if exact && len(got) != len(want) {
				return fmt.Errorf("%s sees %v, want exactly %v", n.Host.Name, got, want)
			}
		}
		return nil
	})
}

// launchStar launches a daemon on every host, each naming only the first
// host, and dumps their logs if the test fails.
func launchStar(t *testing.T, hosts []*testnet.Host) []*node {
	t.Helper()
	return launchStarWith(t, hosts, func(h *testnet.Host, peers []*testnet.Host) *node {
		return launch(t, h, peers)
	})
}

// launchStarWith is launchStar with each daemon started by start, which
// is given the host and the peers it names (none for host1, else host1).
func launchStarWith(t *testing.T, hosts []*testnet.Host, start func(h *testnet.Host, peers []*testnet.Host) *node) []*node {
	t.Helper()
	var nodes []*node
	for i, h := range hosts {
		var peers []*testnet.Host
		if i > 0 {
			peers = hosts[:1]
		}
		nodes = append(nodes, start(h, peers))
	}
	dumpLogsOnFailure(t, nodes...)
	return nodes
}

func allAlive(nodes []*node) map[string]string {
	want := map[string]string{}
	for _, n := range nodes {
		want[n.Host.Name] = "alive"
	}
	return want
}

// derivedSecrets are the test password's gossip keys (current and legacy)
// in the forms a careless log line would show them.
var derivedSecrets = sync.OnceValue(func() []string {
	var out []string
	pw, err := crypto.PasswordKey([]byte(testPassword), meshtest.MeshName)
	if err != nil {
		panic(err)
	}
	legacy, err := crypto.LegacyPasswordKey([]byte(testPassword))
	if err != nil {
		panic(err)
	}
	for _, k := range []*crypto.MasterKey{pw, legacy} {
		g := k.GossipKey()
		out = append(out, hex.EncodeToString(g), base64.StdEncoding.EncodeToString(g))
	}
	return out
})

func assertNoSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, testPassword) {
		t.Fatalf("the mesh password appears in %s", what)
	}
	for _, d := range derivedSecrets() {
		if strings.Contains(s, d) {
			t.Fatalf("a key derived from the mesh password appears in %s", what)
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testnet.RemoveBinaries()
	os.Exit(code)
}
