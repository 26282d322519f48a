// Package meshtest runs real mesh daemons on simulated hosts (see
// internal/testnet) for end-to-end tests, benchmarks and the demo: it
// builds the binaries, launches `mesh launch`, and reads status the way an
// operator does, through the CLI and the control socket.
package meshtest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/testnet"
)

// Password and MeshName are the mesh password the helpers launch daemons
// with and the mesh name that salts its key.
const (
	Password = "meshtest correct horse battery staple"
	MeshName = "meshtest"
)

// KeyFile is where KeyFileArgs puts the test mesh's key file on a host
// (the state dir is private to each simulated host).
const KeyFile = "/var/lib/mesh/mesh.key"

// KeyFileArgs writes the test mesh's key file (the same fixed key on every
// host, mode 0600) to h and returns the flags that make a daemon use it:
// the recommended setup, which skips the password's Argon2id run.
func KeyFileArgs(t testing.TB, h *testnet.Host) []string {
	t.Helper()
	raw := sha256.Sum256([]byte("meshtest key"))
	p := h.Path(KeyFile)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(crypto.KeyFileLine(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--key-file", KeyFile}
}

// Env is the environment that gives a daemon the test mesh's secret.
func Env() []string { return []string{"MESH_PASSWORD=" + Password, "MESH_NAME=" + MeshName} }

// BinDirEnv names an environment variable that, when set, names a
// directory holding mesh and mesh-cni as `make build` leaves them, used
// instead of building: for machines with neither make nor Go, such as the
// kernel test VM of e2e/kernel. Unset, which is the default everywhere
// else, BuildMesh runs `make build`.
const BinDirEnv = "MESH_TEST_BIN_DIR"

// BuildMesh builds mesh and mesh-cni once per test process with the user's
// own `make build`, which puts the plugin next to mesh, where the daemon
// looks for it to install it. It returns the path of mesh. See BinDirEnv
// for prebuilt binaries.
func BuildMesh(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(BinDirEnv); dir != "" {
		for _, name := range testnet.MakeBuildOutputs {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode()&0o111 == 0 {
				t.Fatalf("%s=%s: no executable %s there: %v", BinDirEnv, dir, name, err)
			}
		}
		return filepath.Join(dir, "mesh")
	}
	return filepath.Join(testnet.BuildMake(t), "mesh")
}

// Node is one mesh daemon on a simulated host. Its methods must be called
// from the test's goroutine unless they say otherwise.
type Node struct {
	T    testing.TB
	Host *testnet.Host
	Bin  string
	Proc *testnet.Proc
	Args []string
	Env  []string
}

// Launch starts `mesh launch` on h naming peers, with the password in the
// environment, and waits until its control socket answers.
func Launch(t testing.TB, h *testnet.Host, peers []*testnet.Host, extra ...string) *Node {
	t.Helper()
	return LaunchWithEnv(t, h, peers, Env(), extra...)
}

// LaunchWithEnv is Launch with the daemon's environment given.
func LaunchWithEnv(t testing.TB, h *testnet.Host, peers []*testnet.Host, env []string, extra ...string) *Node {
	t.Helper()
	args := []string{"launch", "--name", h.Name, "--advertise-addr", h.Addr.String(), "--log-level", "debug"}
	args = append(args, extra...)
	for _, p := range peers {
		args = append(args, p.Addr.String())
	}
	n := &Node{T: t, Host: h, Bin: BuildMesh(t), Args: args, Env: env}
	n.Start()
	return n
}

// Start (re)starts the daemon with the same arguments and waits until its
// socket answers.
func (n *Node) Start() {
	n.T.Helper()
	n.Proc = n.Host.Start(n.T, n.Bin, n.Args, n.Env)
	err := testnet.Poll(launchSocketBound, 100*time.Millisecond, func() error {
		if n.Proc.Exited() {
			return fmt.Errorf("mesh on %s exited:\n%s", n.Host.Name, n.Proc.Log())
		}
		_, err := n.SocketStatus()
		return err
	})
	if err == nil {
		return
	}
	if !n.Proc.Exited() {
		// Where did it wait? SIGQUIT makes the Go runtime write every
		// goroutine's stack to the daemon's log before it exits.
		_ = syscall.Kill(n.Proc.PID(), syscall.SIGQUIT)
		_ = n.Proc.Wait(5 * time.Second)
		err = fmt.Errorf("%w (SIGQUIT dumped its goroutines at the end of its log)", err)
	}
	n.T.Fatalf("mesh on %s did not answer on its socket within %v: %v", n.Host.Name, launchSocketBound, err)
}

// launchSocketBound is how long a launched daemon has to answer on its
// socket. Generous, because the 100-host soak saturates two cores: there a
// daemon took 17 s to log its first line and 19.5 s to serve, and each
// `mesh status` of the poll took about 4 s. Only a daemon that never
// answers waits this long; one that exits is caught at once.
const launchSocketBound = 2 * time.Minute

// Status asks the daemon through the real CLI, as an operator would. Safe
// from any goroutine.
func (n *Node) Status() (*api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Host.Run(ctx, n.Bin, "status", "-o", "json")
	if err != nil {
		return nil, err
	}
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("bad status JSON %q: %w", out, err)
	}
	return &st, nil
}

// SocketStatus asks the daemon through its control socket from the test
// process, as mesh-cni does, without starting a process: what tests that
// poll many daemons use, because on a machine simulating a hundred hosts
// a `mesh status` process per host and poll is itself a load that
// competes with the daemons (docs/scale.md). Safe from any goroutine.
func (n *Node) SocketStatus() (*api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := n.Client().Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("status of %s through its socket: %w", n.Host.Name, err)
	}
	return st, nil
}

// MustStatus is Status failing the test on error.
func (n *Node) MustStatus() *api.Status {
	n.T.Helper()
	st, err := n.Status()
	if err != nil {
		n.T.Fatalf("status of %s: %v", n.Host.Name, err)
	}
	return st
}

// Client talks to the daemon's control socket directly, as mesh-cni does.
func (n *Node) Client() *api.Client { return api.NewClient(n.Host.Path(api.DefaultSocket)) }

// Ready reports why the nodes are not yet a working mesh, or nil once every
// node owns a range, has an established connection to each other, and
// routes each other's overlay IP to it (or through a relay). A handshake
// alone is not enough: a node that has not yet heard which peer owns the
// range of an overlay IP sends its packets to the wrong peer, which drops
// them.
func Ready(nodes []*Node) error {
	overlay := map[string]netip.Addr{}
	var sts []*api.Status
	for _, n := range nodes {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.IPAM == nil || st.IPAM.Status != "ready" || st.OverlayIP == "" {
			return fmt.Errorf("%s: IPAM not ready: %+v, overlay IP %q", n.Host.Name, st.IPAM, st.OverlayIP)
		}
		ip, err := netip.ParseAddr(st.OverlayIP)
		if err != nil {
			return fmt.Errorf("%s: overlay IP %q: %w", n.Host.Name, st.OverlayIP, err)
		}
		overlay[st.Name] = ip
		sts = append(sts, st)
	}
	for i, st := range sts {
		name := nodes[i].Host.Name
		if len(st.Connections) != len(nodes)-1 {
			return fmt.Errorf("%s has %d data-plane connections, want %d", name, len(st.Connections), len(nodes)-1)
		}
		for _, c := range st.Connections {
			if c.State != api.ConnEstablished {
				return fmt.Errorf("%s: connection to %s is %s", name, c.Peer, c.State)
			}
			ip, ok := overlay[c.Peer]
			if !ok || c.Via != "" {
				continue
			}
			if !Covers(c.AllowedIPs, netip.PrefixFrom(ip, ip.BitLen())) {
				return fmt.Errorf("%s: connection to %s does not route its overlay IP %s yet (allowed IPs %v)", name, c.Peer, ip, c.AllowedIPs)
			}
		}
	}
	return nil
}

// Covers reports whether one of the allowed IPs (a connection's, as
// status shows them) holds the whole of p.
func Covers(allowed []string, p netip.Prefix) bool {
	for _, s := range allowed {
		q, err := netip.ParsePrefix(s)
		if err == nil && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Where the daemon installs the CNI plugin and its conflist on a simulated
// host (its default directories, private to each host).
var (
	CNIPluginPath = filepath.Join(api.DefaultCNIBinDir, api.CNIPluginName)
	CNIConfPath   = filepath.Join(api.DefaultCNIConfDir, api.CNIConfName)
)

// WaitCNIInstalled waits until the daemon has installed the plugin and its
// network config.
func WaitCNIInstalled(t testing.TB, n *Node) {
	t.Helper()
	testnet.Eventually(t, 60*time.Second, 250*time.Millisecond, func() error {
		for _, p := range []string{CNIPluginPath, CNIConfPath} {
			if _, err := os.Stat(n.Host.Path(p)); err != nil {
				return err
			}
		}
		return nil
	})
}

// DumpLogsOnFailure logs the daemons' output when the test fails. Under
// CI=true the simulated network's teardown keeps every process's log in a
// file instead (testnet.QuietFailureLogs).
func DumpLogsOnFailure(t testing.TB, nodes ...*Node) {
	t.Cleanup(func() {
		if !t.Failed() || testnet.QuietFailureLogs() {
			return
		}
		for _, n := range nodes {
			if n.Proc == nil {
				continue
			}
			t.Logf("--- log of mesh on %s:\n%s", n.Host.Name, n.Proc.Log())
		}
	})
}
