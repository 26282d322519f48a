//go:build bench

package bench

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/testnet"
)

// Small helpers copied from e2e (which are _test files and cannot be
// imported), adapted to talk to the daemon's socket directly.

const benchPassword = "bench correct horse battery staple"

type node struct {
	host *testnet.Host
	proc *testnet.Proc
	api  *api.Client
}

// meshBinary builds mesh and mesh-cni once and puts the plugin next to
// mesh, where the daemon looks for it to install it.
func meshBinary(t *testing.T) string {
	bin := testnet.BuildBinary(t, "./cmd/mesh")
	cni := testnet.BuildBinary(t, "./cmd/mesh-cni")
	copyFile(t, cni, filepath.Join(filepath.Dir(bin), "mesh-cni"), 0o755)
	return bin
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		t.Fatal(err)
	}
}

// launch starts `mesh launch` on h (naming peers) and waits until its
// control socket answers.
func launch(t *testing.T, h *testnet.Host, peers []*testnet.Host, extra ...string) *node {
	t.Helper()
	args := []string{"launch", "--name", h.Name, "--advertise-addr", h.Addr.String(), "--log-level", "info"}
	args = append(args, extra...)
	args = append(args, meshArgs...)
	for _, p := range peers {
		args = append(args, p.Addr.String())
	}
	n := &node{host: h, api: api.NewClient(h.Path(api.DefaultSocket))}
	n.proc = h.Start(t, meshBinary(t), args, append([]string{"MESH_PASSWORD=" + benchPassword}, meshEnv...))
	testnet.Eventually(t, 20*time.Second, 100*time.Millisecond, func() error {
		if n.proc.Exited() {
			return fmt.Errorf("mesh on %s exited:\n%s", h.Name, n.proc.Log())
		}
		_, err := n.status()
		return err
	})
	return n
}

func (n *node) status() (*api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.api.Status(ctx)
}

// waitReady waits (at most timeout) until every node owns a range and has
// an established data-plane connection to each other node.
func waitReady(nodes []*node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = readyOnce(nodes); last == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v: %w", timeout, last)
}

func readyOnce(nodes []*node) error {
	for _, n := range nodes {
		st, err := n.status()
		if err != nil {
			return err
		}
		if st.IPAM == nil || st.IPAM.Status != "ready" || st.OverlayIP == "" {
			return fmt.Errorf("%s: IPAM not ready: %+v, overlay IP %q", n.host.Name, st.IPAM, st.OverlayIP)
		}
		if len(st.Connections) != len(nodes)-1 {
			return fmt.Errorf("%s has %d data-plane connections, want %d", n.host.Name, len(st.Connections), len(nodes)-1)
		}
		for _, c := range st.Connections {
			if c.State != "established" {
				return fmt.Errorf("%s: connection to %s is %s", n.host.Name, c.Peer, c.State)
			}
		}
	}
	return nil
}

// waitCNIInstalled waits until the daemon has installed the plugin.
func waitCNIInstalled(t *testing.T, n *node) {
	t.Helper()
	testnet.Eventually(t, 60*time.Second, 250*time.Millisecond, func() error {
		for _, p := range []string{"/opt/cni/bin/mesh-cni", "/etc/cni/net.d/10-mesh.conflist"} {
			if _, err := os.Stat(n.host.Path(p)); err != nil {
				return err
			}
		}
		return nil
	})
}

// memory is what /proc/PID/status says of a process, in bytes.
type memory struct{ rss, hwm, anon int64 }

func readMemory(pid int) (memory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			m.rss = v << 10
		case "VmHWM:":
			m.hwm = v << 10
		case "RssAnon:":
			m.anon = v << 10
		}
	}
	if m.rss == 0 {
		return m, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}

// wgKeys returns a WireGuard private key and its public key, hex encoded
// as the UAPI wants them.
func wgKeys(t *testing.T) (priv, pub string) {
	t.Helper()
	k, err := crypto.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := k.Public()
	if err != nil {
		t.Fatal(err)
	}
	b := k.Bytes()
	return hex.EncodeToString(b[:]), hex.EncodeToString(p[:])
}
