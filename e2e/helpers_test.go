package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

const testPassword = "e2e correct horse battery staple"

// node is one mesh daemon on a simulated host.
type node struct {
	t    *testing.T
	host *testnet.Host
	bin  string
	proc *testnet.Proc
	args []string
	env  []string
}

// meshBinary builds mesh and mesh-cni once per test process and puts the
// plugin next to mesh, where the daemon looks for it to install it.
func meshBinary(t *testing.T) string {
	bin := testnet.BuildBinary(t, "./cmd/mesh")
	cni := testnet.BuildBinary(t, "./cmd/mesh-cni")
	dst := filepath.Join(filepath.Dir(bin), "mesh-cni")
	if _, err := os.Stat(dst); err != nil {
		data, err := os.ReadFile(cni)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

// launch starts `mesh launch` on h with the password in the environment.
func launch(t *testing.T, h *testnet.Host, peers []*testnet.Host, extra ...string) *node {
	t.Helper()
	return launchWithEnv(t, h, peers, []string{"MESH_PASSWORD=" + testPassword}, extra...)
}

func launchWithEnv(t *testing.T, h *testnet.Host, peers []*testnet.Host, env []string, extra ...string) *node {
	t.Helper()
	args := []string{"launch", "--name", h.Name, "--advertise-addr", h.Addr.String(), "--log-level", "debug"}
	args = append(args, extra...)
	for _, p := range peers {
		args = append(args, p.Addr.String())
	}
	n := &node{t: t, host: h, bin: meshBinary(t), args: args, env: env}
	n.start()
	return n
}

func (n *node) start() {
	n.t.Helper()
	n.proc = n.host.Start(n.t, n.bin, n.args, n.env)
	testnet.Eventually(n.t, 10*time.Second, 100*time.Millisecond, func() error {
		if n.proc.Exited() {
			return fmt.Errorf("mesh on %s exited:\n%s", n.host.Name, n.proc.Log())
		}
		_, err := n.status()
		return err
	})
}

// status asks the daemon through the real CLI, as an operator would.
func (n *node) status() (*api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.host.Run(ctx, n.bin, "status", "-o", "json")
	if err != nil {
		return nil, err
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("bad status JSON %q: %w", out, err)
	}
	return &st, nil
}

func (n *node) mustStatus() *api.Status {
	n.t.Helper()
	st, err := n.status()
	if err != nil {
		n.t.Fatalf("status of %s: %v", n.host.Name, err)
	}
	return st
}

// peerStates maps peer name to state as n sees it.
func (n *node) peerStates() (map[string]string, error) {
	st, err := n.status()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, p := range st.Peers {
		out[p.Name] = p.State
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
			got, err := n.peerStates()
			if err != nil {
				return err
			}
			for name, state := range want {
				if got[name] != state {
					return fmt.Errorf("%s sees %s as %q, want %q (all: %v)", n.host.Name, name, got[name], state, got)
				}
			}
			if exact && len(got) != len(want) {
				return fmt.Errorf("%s sees %v, want exactly %v", n.host.Name, got, want)
			}
		}
		return nil
	})
}

func allAlive(nodes []*node) map[string]string {
	want := map[string]string{}
	for _, n := range nodes {
		want[n.host.Name] = "alive"
	}
	return want
}

// dumpLogsOnFailure prints the daemons' logs when the test fails.
func dumpLogsOnFailure(t *testing.T, nodes ...*node) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range nodes {
			if n.proc != nil {
				t.Logf("--- log of mesh on %s:\n%s", n.host.Name, n.proc.Log())
			}
		}
	})
}

func assertNoSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, testPassword) {
		t.Fatalf("the mesh password appears in %s", what)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	testnet.RemoveBinaries()
	os.Exit(code)
}
