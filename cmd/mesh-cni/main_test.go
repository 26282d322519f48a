package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshnet/mesh/cni"
	"github.com/meshnet/mesh/cni/cnitest"
	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

// run invokes the plugin binary as a runtime does (like cnitool): CNI_*
// environment variables, the configuration on stdin, the result or error
// JSON on stdout. nsenter puts it in the test's host netns.
func run(t *testing.T, bin, hostNS string, env map[string]string, stdin string) (stdout string, exitCode int) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+hostNS, bin)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH=/opt/cni/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		exitCode = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("failed to run %s: %v (stderr: %s)", bin, err, errOut.String())
	}
	return out.String(), exitCode
}

func podEnv(cmd, netns string) map[string]string {
	return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0"}
}

func TestBinary(t *testing.T) {
	testnet.RequireRoot(t)
	bin := testnet.BuildBinary(t, "./cmd/mesh-cni")
	d := cnitest.NewFakeDaemon(t, "10.32.0.0/12", "10.32.0.0/24")
	host := cnitest.NewHost(t, d)
	pod := netnstest.New(t)
	conf := func(v string) string {
		return fmt.Sprintf(`{"cniVersion":%q,"name":"mesh","type":"mesh-cni","socket":%q}`, v, d.Socket)
	}

	t.Run("VERSION", func(t *testing.T) {
		out, code := run(t, bin, host.NS, map[string]string{"CNI_COMMAND": "VERSION"}, conf("1.1.0"))
		if code != 0 {
			t.Fatalf("exit code %d, output %s", code, out)
		}
		var v struct {
			Supported []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("VERSION output %q: %v", out, err)
		}
		if got := strings.Join(v.Supported, ","); got != "0.3.0,0.3.1,0.4.0,1.0.0,1.1.0" {
			t.Errorf("supported versions = %s", got)
		}
	})

	for _, v := range []string{"1.1.0", "0.4.0"} {
		t.Run("ADD and DEL "+v, func(t *testing.T) {
			out, code := run(t, bin, host.NS, podEnv("ADD", pod), conf(v))
			if code != 0 {
				t.Fatalf("ADD exit code %d, output %s", code, out)
			}
			var ip, gw string
			switch v {
			case "1.1.0":
				var res current.Result
				if err := json.Unmarshal([]byte(out), &res); err != nil || res.CNIVersion != v || len(res.IPs) != 1 {
					t.Fatalf("ADD output %s is no %s result (%v)", out, v, err)
				}
				ip, gw = res.IPs[0].Address.String(), res.IPs[0].Gateway.String()
			case "0.4.0":
				var res types040.Result
				if err := json.Unmarshal([]byte(out), &res); err != nil || res.CNIVersion != v || len(res.IPs) != 1 {
					t.Fatalf("ADD output %s is no %s result (%v)", out, v, err)
				}
				ip, gw = res.IPs[0].Address.String(), res.IPs[0].Gateway.String()
			}
			if a := d.Allocations(); len(a) != 1 || a[0].Address != ip || gw != d.Gateway.String() {
				t.Errorf("result ip %s gw %s, daemon holds %+v", ip, gw, a)
			}
			if host.Link(cni.HostVethName("c1", "eth0")) == nil {
				t.Error("no host veth after ADD")
			}
			for i := range 2 {
				out, code = run(t, bin, host.NS, podEnv("DEL", pod), conf(v))
				if code != 0 || out != "" {
					t.Fatalf("DEL #%d: exit code %d, output %q", i+1, code, out)
				}
			}
			if host.Link(cni.HostVethName("c1", "eth0")) != nil || len(d.Allocations()) != 0 {
				t.Errorf("DEL left the veth or the allocation %+v", d.Allocations())
			}
		})
	}

	t.Run("CHECK", func(t *testing.T) {
		if out, code := run(t, bin, host.NS, podEnv("ADD", pod), conf("1.1.0")); code != 0 {
			t.Fatalf("ADD exit code %d, output %s", code, out)
		}
		defer run(t, bin, host.NS, podEnv("DEL", pod), conf("1.1.0"))
		if out, code := run(t, bin, host.NS, podEnv("CHECK", pod), conf("1.1.0")); code != 0 {
			t.Fatalf("CHECK exit code %d, output %s", code, out)
		}
	})

	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		code  uint
		msg   string
	}{
		{name: "malformed config", env: podEnv("ADD", pod), stdin: `{"cniVersion":`, code: types.ErrDecodingFailure},
		{name: "wrong type", env: podEnv("ADD", pod), stdin: `{"cniVersion":"1.1.0","name":"mesh","socket":1}`, code: types.ErrInvalidNetworkConfig, msg: `"socket"`},
		{name: "missing netns", env: podEnv("ADD", "/nonexistent/ns"), stdin: conf("1.1.0"), code: types.ErrInvalidEnvironmentVariables, msg: "/nonexistent/ns"},
		{name: "interface name too long", env: map[string]string{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": pod, "CNI_IFNAME": "a-much-too-long-name"},
			stdin: conf("1.1.0"), code: types.ErrInvalidEnvironmentVariables, msg: "too long"},
		{name: "unsupported version", env: podEnv("ADD", pod), stdin: conf("9.9.9"), code: types.ErrIncompatibleCNIVersion},
		{name: "daemon down", env: podEnv("ADD", pod), stdin: `{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","socket":"/nonexistent/mesh.sock"}`,
			code: types.ErrTryAgainLater, msg: "cannot reach the mesh daemon at /nonexistent/mesh.sock (is `mesh launch` running?)"},
		{name: "STATUS daemon down", env: map[string]string{"CNI_COMMAND": "STATUS"}, stdin: `{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","socket":"/nonexistent/mesh.sock"}`,
			code: types.ErrPluginNotAvailable, msg: "cannot reach the mesh daemon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, bin, host.NS, tt.env, tt.stdin)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			var e types.Error
			if err := json.Unmarshal([]byte(out), &e); err != nil {
				t.Fatalf("output %q is no CNI error: %v", out, err)
			}
			if e.Code != tt.code || !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("error = code %d %q, want code %d containing %q", e.Code, e.Msg, tt.code, tt.msg)
			}
			if links := host.Links(t); len(links) != 2 {
				t.Errorf("host links after a failed ADD = %v", links)
			}
			if a := d.Allocations(); len(a) != 0 {
				t.Errorf("allocations after a failed ADD = %+v", a)
			}
		})
	}
}
