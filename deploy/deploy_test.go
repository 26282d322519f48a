// Package deploy holds the tests of what `make install` and `make deb`
// put on a host: files, modes, the systemd unit and the Debian package.
package deploy

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testnet.RemoveBinaries()
	os.Exit(code)
}

// moduleRoot is the repository, where the Makefile is.
func moduleRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// runMake runs a make target of the repository with the test's build
// outputs (the user's `make build`, see testnet.BuildMake).
func runMake(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	all := append([]string{"-s", "BIN=" + testnet.BuildMake(t), "GO=" + goBin}, args...)
	cmd := exec.CommandContext(ctx, "make", all...)
	cmd.Dir = moduleRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// entry is one installed path: its type and permission bits, and for a
// symlink its target.
type entry struct {
	mode   fs.FileMode
	target string
}

func tree(t *testing.T, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{mode: fi.Mode() & (fs.ModeType | fs.ModePerm)}
		if fi.Mode()&fs.ModeSymlink != 0 {
			e.target, _ = os.Readlink(p)
		}
		out[strings.TrimPrefix(p, root)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func dirs(paths ...string) map[string]entry {
	out := map[string]entry{}
	for _, p := range paths {
		for ; p != "/"; p = filepath.Dir(p) {
			if _, ok := out[p]; !ok {
				out[p] = entry{mode: fs.ModeDir | 0o755}
			}
		}
	}
	return out
}

// installedFiles is what `make install` must install under prefix.
func installedFiles(prefix string) map[string]entry {
	files := map[string]entry{
		prefix + "/bin/mesh":                        {mode: 0o755},
		prefix + "/bin/mesh-kube":                   {mode: 0o755},
		prefix + "/bin/mesh-cni":                    {mode: 0o755},
		prefix + "/bin/mesh-dataplane":              {mode: 0o755},
		prefix + "/lib/systemd/system/mesh.service": {mode: 0o644},
		"/etc/default/mesh":                         {mode: 0o644},
		"/opt/cni/bin/mesh-cni":                     {mode: 0o755},
		"/usr/lib/cni/mesh-cni":                     {mode: fs.ModeSymlink | 0o777, target: "/opt/cni/bin/mesh-cni"},
	}
	var parents []string
	for p := range files {
		parents = append(parents, filepath.Dir(p))
	}
	want := dirs(append(parents, "/etc/cni/net.d")...)
	for p, e := range files {
		want[p] = e
	}
	want["/etc/mesh"] = entry{mode: fs.ModeDir | 0o700}
	return want
}

func compareTree(t *testing.T, got, want map[string]entry) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			diffs = append(diffs, "missing "+p)
		} else if g != w {
			diffs = append(diffs, p+": "+g.mode.String()+" "+g.target+", want "+w.mode.String()+" "+w.target)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "unexpected "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("installed tree differs:\n  %s", strings.Join(diffs, "\n  "))
	}
}

func TestMakeInstall(t *testing.T) {
	tests := []struct {
		name, prefix string
		args         []string
	}{
		{"default prefix", "/usr/local", nil},
		{"prefix /usr", "/usr", []string{"PREFIX=/usr"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := t.TempDir()
			runMake(t, append([]string{"install", "DESTDIR=" + dest}, tt.args...)...)
			compareTree(t, tree(t, dest), installedFiles(tt.prefix))

			unit, err := os.ReadFile(filepath.Join(dest, tt.prefix, "lib/systemd/system/mesh.service"))
			if err != nil {
				t.Fatal(err)
			}
			if want := "ExecStart=" + tt.prefix + "/bin/mesh launch "; !strings.Contains(string(unit), want) {
				t.Fatalf("unit lacks %q:\n%s", want, unit)
			}

			// The settings file is the user's once installed.
			env := filepath.Join(dest, "etc/default/mesh")
			if err := os.WriteFile(env, []byte("MESH_PEERS=\"192.0.2.10\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(env, 0o600); err != nil {
				t.Fatal(err)
			}
			runMake(t, append([]string{"install", "DESTDIR=" + dest}, tt.args...)...)
			if b, _ := os.ReadFile(env); string(b) != "MESH_PEERS=\"192.0.2.10\"\n" {
				t.Fatalf("make install overwrote the settings file: %q", b)
			}
			if fi, _ := os.Stat(env); fi.Mode().Perm() != 0o600 {
				t.Fatalf("make install changed the settings file's mode to %v", fi.Mode())
			}
			if err := os.WriteFile(filepath.Join(dest, "etc/mesh/mesh.key"), []byte("x\n"), 0o600); err != nil {
				t.Fatal(err)
			}

			runMake(t, append([]string{"uninstall", "DESTDIR=" + dest}, tt.args...)...)
			got := tree(t, dest)
			for _, p := range []string{tt.prefix + "/bin/mesh", tt.prefix + "/bin/mesh-kube", tt.prefix + "/bin/mesh-cni", tt.prefix + "/bin/mesh-dataplane", tt.prefix + "/lib/systemd/system/mesh.service", "/opt/cni/bin/mesh-cni", "/usr/lib/cni/mesh-cni"} {
				if _, ok := got[p]; ok {
					t.Errorf("make uninstall left %s", p)
				}
			}
			for _, p := range []string{"/etc/default/mesh", "/etc/mesh/mesh.key"} {
				if _, ok := got[p]; !ok {
					t.Errorf("make uninstall removed the user's %s", p)
				}
			}
		})
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify on the installed
// unit. systemd is not PID 1 here, so the unit is verified offline, with
// ExecStart pointing at the binary installed in the temporary root
// (verify checks that it exists and is executable).
func TestSystemdUnitVerifies(t *testing.T) {
	analyze := testnet.RequireCommand(t, "systemd-analyze")
	dest := t.TempDir()
	runMake(t, "install", "DESTDIR="+dest)
	unit, err := os.ReadFile(filepath.Join(dest, "usr/local/lib/systemd/system/mesh.service"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "units")
	os.Mkdir(dir, 0o755)
	path := filepath.Join(dir, "mesh.service")
	rooted := strings.ReplaceAll(string(unit), "/usr/local/bin/", filepath.Join(dest, "usr/local/bin")+"/")
	if err := os.WriteFile(path, []byte(rooted), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// KillMode=process: `systemctl restart mesh` (and stop) signals the
	// daemon only, so the mesh-dataplane process it started in the unit's
	// cgroup keeps forwarding (docs/architecture.md, "Restarts, crashes
	// and leaving").
	for _, want := range []string{"Restart=on-failure", "KillSignal=SIGTERM", "KillMode=process", "EnvironmentFile=-/etc/default/mesh", "--key-file=${MESH_KEY_FILE}", "CAP_NET_ADMIN", "CAP_NET_RAW", "DeviceAllow=/dev/net/tun rw"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	// The check must be able to fail: a broken unit is refused.
	broken := strings.Replace(rooted, "Type=exec", "Type=bogus", 1)
	os.WriteFile(path, []byte(broken), 0o644)
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err == nil && !strings.Contains(string(out), "bogus") {
		t.Fatalf("systemd-analyze verify accepted Type=bogus: %s", out)
	}
}

// TestDaemonSetCapabilities: the daemon's container drops every
// capability but NET_ADMIN and NET_RAW (the path prober's ICMP socket,
// docs/routing.md), the data plane's every one but NET_ADMIN, and neither
// is privileged.
func TestDaemonSetCapabilities(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("kubernetes", "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for want, n := range map[string]int{`drop: ["ALL"]`: 2, `add: ["NET_ADMIN", "NET_RAW"]`: 1, `add: ["NET_ADMIN"]`: 1, `privileged: false`: 2, `privileged: true`: 0} {
		if got := strings.Count(s, want); got != n {
			t.Errorf("mesh.yaml has %d lines %q, want %d", got, want, n)
		}
	}
}

// TestDataplaneDaemonSet: on Kubernetes the userspace data plane runs in
// a DaemonSet of its own, which a rollout of the daemon's does not touch
// (OnDelete), on the host network, sharing the UAPI socket directory and
// the TUN device with the daemon, which uses it and never starts its own.
func TestDataplaneDaemonSet(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("kubernetes", "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(b), "\n---\n")
	var dp, daemon string
	for _, d := range docs {
		switch {
		case strings.Contains(d, "kind: DaemonSet") && strings.Contains(d, "name: mesh-dataplane"):
			dp = d
		case strings.Contains(d, "kind: DaemonSet") && strings.Contains(d, "name: mesh\n"):
			daemon = d
		}
	}
	if dp == "" || daemon == "" {
		t.Fatalf("mesh.yaml lacks the mesh or the mesh-dataplane DaemonSet")
	}
	for _, want := range []string{"type: OnDelete", "hostNetwork: true", `command: ["/usr/local/bin/mesh-dataplane", "--idle-with-kernel"]`,
		"path: /var/run/wireguard", "path: /dev/net/tun", "mountPath: /var/run/wireguard", "mountPath: /dev/net/tun"} {
		if !strings.Contains(dp, want) {
			t.Errorf("the mesh-dataplane DaemonSet lacks %q", want)
		}
	}
	if !strings.Contains(daemon, "- --dataplane-process=external") || !strings.Contains(daemon, "path: /var/run/wireguard") {
		t.Errorf("the mesh DaemonSet does not use the external data plane through /var/run/wireguard")
	}
}
