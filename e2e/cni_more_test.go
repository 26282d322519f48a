package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestCNILibcniAcrossHosts drives mesh-cni with libcni in this process, as
// containerd does, on two hosts: each host's pod is wired from a thread in
// that host's network namespace, with the host's paths seen from outside.
func TestCNILibcniAcrossHosts(t *testing.T) {
	_, nodes := startMesh(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ips []string
	for i, n := range nodes {
		waitCNIInstalled(t, n)
		h := n.Host
		name := fmt.Sprintf("lib%d", i)
		if out, err := h.Run(ctx, "ip", "netns", "add", name); err != nil {
			t.Fatalf("ip netns add: %v\n%s", err, out)
		}
		// The host's /run/netns is private to its mount namespace; from
		// here the pod's namespace is reached through a process in it.
		holder := h.Start(t, "ip", []string{"netns", "exec", name, "sleep", "600"}, nil)
		netnsPath := fmt.Sprintf("/proc/%d/ns/net", holder.PID())
		testnet.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
			// ip has joined the namespace once it has become sleep.
			comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", holder.PID()))
			if err != nil || strings.TrimSpace(string(comm)) != "sleep" {
				return fmt.Errorf("namespace holder not ready: %q %v", comm, err)
			}
			return nil
		})
		raw, err := os.ReadFile(h.Path(meshtest.CNIConfPath))
		if err != nil {
			t.Fatal(err)
		}
		// The plugin runs in this process's mount namespace: point it at
		// the host's socket as seen from here.
		conf := strings.Replace(string(raw), "/run/mesh/mesh.sock", h.Path("/run/mesh/mesh.sock"), 1)
		list, err := libcni.ConfListFromBytes([]byte(conf))
		if err != nil {
			t.Fatal(err)
		}
		cni := libcni.NewCNIConfigWithCacheDir([]string{h.Path("/opt/cni/bin")}, t.TempDir(), nil)
		rt := &libcni.RuntimeConf{ContainerID: "libcni-" + name, NetNS: netnsPath, IfName: "eth0"}
		var res *types100.Result
		err = h.Do(func() error {
			runtime.LockOSThread() // the plugin inherits this thread's namespace
			r, err := cni.AddNetworkList(ctx, list, rt)
			if err != nil {
				return err
			}
			res, err = types100.NewResultFromResult(r)
			return err
		})
		if err != nil {
			t.Fatalf("libcni ADD on %s: %v", h.Name, err)
		}
		if len(res.IPs) != 1 {
			t.Fatalf("result %+v", res)
		}
		ips = append(ips, res.IPs[0].Address.IP.String())
		t.Cleanup(func() {
			h.Do(func() error {
				runtime.LockOSThread()
				return cni.DelNetworkList(context.Background(), list, rt)
			})
		})
	}
	out, err := nodes[0].Host.Run(ctx, "ip", "netns", "exec", "lib0", "ping", "-c", "2", "-W", "2", "-i", "0.2", ips[1])
	if err != nil {
		t.Fatalf("pod on %s cannot ping pod on %s (%s): %v\n%s", nodes[0].Host.Name, nodes[1].Host.Name, ips[1], err, out)
	}
}

// cniError is the CNI error JSON a plugin prints on failure.
type cniError struct {
	Code uint   `json:"code"`
	Msg  string `json:"msg"`
}

// runPlugin runs mesh-cni on h as a runtime would and returns its stdout
// and exit error.
func runPlugin(ctx context.Context, h *testnet.Host, env []string, stdin string) (string, error) {
	args := append([]string{"-i"}, env...)
	args = append(args, "sh", "-c", "exec /opt/cni/bin/mesh-cni")
	cmd := h.Exec(ctx, "env", args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	return string(out), err
}

func TestCNIBadInputAgainstRealDaemon(t *testing.T) {
	n, ctx := cniNode(t, 2*time.Minute)
	if out, err := n.Host.Run(ctx, "ip", "netns", "add", "bad"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	good := `{"cniVersion":"1.0.0","name":"mesh","type":"mesh-cni"}`
	env := func(ifname, netns string) []string {
		return []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND=ADD", "CNI_CONTAINERID=bad-1", "CNI_NETNS=" + netns, "CNI_IFNAME=" + ifname, "CNI_PATH=/opt/cni/bin"}
	}
	tests := []struct {
		name  string
		env   []string
		conf  string
		code  uint
		words string
	}{
		{"malformed JSON", env("eth0", "/run/netns/bad"), `{"cniVersion":`, 6, ""},
		{"known field of the wrong type", env("eth0", "/run/netns/bad"), `{"cniVersion":"1.0.0","name":"mesh","type":"mesh-cni","socket":42}`, 7, "socket"},
		{"missing netns", env("eth0", "/run/netns/nope"), good, 4, "/run/netns/nope"},
		{"interface name too long", env("eth0-is-far-too-long", "/run/netns/bad"), good, 4, "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runPlugin(ctx, n.Host, tt.env, tt.conf)
			if err == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			var e cniError
			if jerr := json.Unmarshal([]byte(out), &e); jerr != nil {
				t.Fatalf("not CNI error JSON: %q", out)
			}
			if e.Code != tt.code || !strings.Contains(e.Msg, tt.words) {
				t.Fatalf("error %+v, want code %d naming %q", e, tt.code, tt.words)
			}
		})
	}
	assertNothingLeft := func() {
		t.Helper()
		if st := n.MustStatus(); st.IPAM.Allocated != 0 {
			t.Fatalf("%d allocations left behind", st.IPAM.Allocated)
		}
		links, _ := n.Host.Run(ctx, "ip", "-o", "link", "show")
		podLinks, _ := n.Host.Run(ctx, "ip", "-n", "bad", "-o", "link", "show")
		if strings.Contains(links, "vmesh") || strings.Contains(podLinks, "eth0") {
			t.Fatalf("links left behind:\n%s\n%s", links, podLinks)
		}
	}
	assertNothingLeft()

	// With the daemon down, ADD asks the runtime to try again later.
	if err := n.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, err := runPlugin(ctx, n.Host, env("eth0", "/run/netns/bad"), good)
	var e cniError
	if err == nil || json.Unmarshal([]byte(out), &e) != nil || e.Code != 11 || !strings.Contains(e.Msg, "mesh launch") {
		t.Fatalf("ADD with the daemon down: err=%v, out %q; want code 11", err, out)
	}
	n.Start()
	assertNothingLeft()
}

// TestReset checks that `mesh reset` removes what mesh made on a host,
// the data-plane process that outlived the daemon included, and refuses
// while a daemon runs the data plane.
func TestReset(t *testing.T) {
	n, ctx := cniNode(t, time.Minute)
	if out, err := n.Host.Run(ctx, n.Bin, "reset"); err == nil {
		t.Fatalf("reset succeeded while the daemon runs:\n%s", out)
	}
	if err := n.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	// SIGTERM leaves the data plane up for the pods, with its process.
	if links, _ := n.Host.Run(ctx, "ip", "-o", "link", "show"); !strings.Contains(links, "mesh-wg") {
		t.Fatalf("SIGTERM took the data plane down:\n%s", links)
	}
	if pids, err := meshtest.DataplaneProcesses(n.Host); err != nil || len(pids) != 1 {
		t.Fatalf("mesh-dataplane processes after SIGTERM of the daemon: %v (%v), want one", pids, err)
	}
	// The isolation tables outlive SIGTERM too: pods stay isolated.
	if out, err := n.Host.Run(ctx, "nft", "list", "tables"); err != nil || !strings.Contains(out, "bridge mesh-isolation") || !strings.Contains(out, "inet mesh-isolation") {
		t.Fatalf("isolation tables gone after SIGTERM (%v):\n%s", err, out)
	}
	if out, err := n.Host.Run(ctx, "nft", "list", "tables"); err != nil || !strings.Contains(out, "inet mesh-relay") {
		t.Fatalf("no relayed-traffic counter table (%v):\n%s", err, out)
	}
	if _, err := n.Host.Run(ctx, n.Bin, "reset", "--state"); err != nil {
		t.Fatalf("reset: %v", err)
	}
	if pids, err := meshtest.DataplaneProcesses(n.Host); err != nil || len(pids) != 0 {
		t.Fatalf("mesh-dataplane processes after mesh reset: %v (%v), want none", pids, err)
	}
	if out, _ := n.Host.Run(ctx, "nft", "list", "tables"); strings.Contains(out, "mesh-isolation") || strings.Contains(out, "mesh-relay") {
		t.Fatalf("reset left the isolation tables or the relayed-traffic counter:\n%s", out)
	}
	links, _ := n.Host.Run(ctx, "ip", "-o", "link", "show")
	routes, _ := n.Host.Run(ctx, "ip", "route", "show", "proto", "109")
	if strings.Contains(links, "mesh") || strings.TrimSpace(routes) != "" {
		t.Fatalf("reset left links or routes:\n%s\n%s", links, routes)
	}
	for _, p := range []string{meshtest.CNIConfPath, meshtest.CNIPluginPath, "/var/lib/mesh/identity.json"} {
		if _, err := n.Host.Run(ctx, "test", "-e", p); err == nil {
			t.Fatalf("reset left %s", p)
		}
	}
}
