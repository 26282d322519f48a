//go:build bench

package bench

import (
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

type node struct {
	*meshtest.Node
	api *api.Client
}

// launch starts `mesh launch` on h (naming peers), at info level so that
// logging does not weigh on the measurements, with a key file (the
// recommended setup: no password stretching in the memory figures), and
// waits until its control socket answers.
func launch(t *testing.T, h *testnet.Host, peers []*testnet.Host, extra ...string) *node {
	t.Helper()
	extra = append(append(append([]string{"--log-level", "info"}, meshtest.KeyFileArgs(t, h)...), extra...), meshArgs...)
	env := meshEnv
	m := meshtest.LaunchWithEnv(t, h, peers, env, extra...)
	return &node{Node: m, api: m.Client()}
}

// waitReady waits (at most timeout) until every node owns a range and has
// an established data-plane connection to each other node.
func waitReady(nodes []*node, timeout time.Duration) error {
	var ms []*meshtest.Node
	for _, n := range nodes {
		ms = append(ms, n.Node)
	}
	return testnet.Poll(timeout, 250*time.Millisecond, func() error { return meshtest.Ready(ms) })
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

// meshMemory is the memory of n's mesh: its daemon's, plus its
// mesh-dataplane process's when the userspace data plane runs in one
// (summed: RSS, the peaks, anonymous memory), so that the figures compare
// with a daemon that ran wireguard-go itself.
func meshMemory(n *node) (memory, error) {
	m, err := readMemory(n.Proc.PID())
	if err != nil {
		return m, err
	}
	st, err := n.Status()
	if err != nil {
		return m, err
	}
	if dp := st.DataplaneProcess; dp != nil && dp.PID != 0 {
		d, err := readMemory(dp.PID)
		if err != nil {
			return m, fmt.Errorf("data-plane process: %w", err)
		}
		m.rss, m.hwm, m.anon = m.rss+d.rss, m.hwm+d.hwm, m.anon+d.anon
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
