package deploy

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// buildDeb runs `make deb` into a directory of its own and returns the
// package's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	out := t.TempDir()
	runMake(t, "deb", "BIN="+out, "VERSION=v1.2.3-4-gabcdef")
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v, want one .deb", debs)
	}
	if want := "mesh_1.2.3+4+gabcdef_" + runtime.GOARCH + ".deb"; filepath.Base(debs[0]) != want {
		t.Fatalf("package %s, want %s", filepath.Base(debs[0]), want)
	}
	if rest, _ := os.ReadDir(out); len(rest) != 1+len(testnet.MakeBuildOutputs) {
		t.Errorf("make deb left more than %v and the package in BIN: %v", testnet.MakeBuildOutputs, rest)
	}
	return debs[0]
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fakeSystemctl puts a systemctl and a mesh on PATH that only record their
// arguments (mesh's prefixed with "mesh").
func fakeSystemctl(t *testing.T) (path, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$*\" >> " + log + "\n"
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// mesh too, for the prerm's `mesh leave`.
	if err := os.WriteFile(filepath.Join(dir, "mesh"), []byte("#!/bin/sh\necho \"mesh $*\" >> "+log+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir + ":" + os.Getenv("PATH"), log
}

func calls(log string) string {
	b, _ := os.ReadFile(log)
	return strings.TrimSpace(string(b))
}

func TestDebPackage(t *testing.T) {
	testnet.RequireCommand(t, "dpkg-deb")
	dpkg := testnet.RequireCommand(t, "dpkg")
	deb := buildDeb(t)

	t.Run("control", func(t *testing.T) {
		want := map[string]string{
			"Package": "mesh", "Version": "1.2.3+4+gabcdef", "Architecture": runtime.GOARCH,
			"Section": "net", "Maintainer": "mesh developers <mesh@localhost>",
			"Description": "Encrypted mesh overlay network for containers.",
		}
		for field, v := range want {
			got, _, _ := strings.Cut(strings.TrimSpace(run(t, nil, "dpkg-deb", "-f", deb, field)), "\n")
			if got != v {
				t.Errorf("control field %s = %q, want %q", field, got, v)
			}
		}
		if got := strings.TrimSpace(run(t, nil, "dpkg-deb", "-f", deb, "Depends")); got != "" {
			t.Errorf("Depends = %q, want none (static binaries)", got)
		}
	})

	t.Run("contents", func(t *testing.T) {
		got := map[string]entry{}
		line := regexp.MustCompile(`^(\S+) \S+\s+\d+ \S+ \S+ \.(/\S*?)/?(?: -> (\S+))?$`)
		for _, l := range strings.Split(strings.TrimSpace(run(t, nil, "dpkg-deb", "-c", deb)), "\n") {
			m := line.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("unparsable dpkg-deb -c line %q", l)
			}
			if m[2] == "" {
				continue
			}
			got[m[2]] = debEntry(m[1], m[3])
		}
		want := installedFiles("/usr")
		// dpkg shows symlinks without permissions; only type and target count.
		want["/usr/lib/cni/mesh-cni"] = entry{mode: fs.ModeSymlink, target: "/opt/cni/bin/mesh-cni"}
		compareTree(t, got, want)
		dir := t.TempDir()
		run(t, nil, "dpkg-deb", "-e", deb, dir)
		if b, _ := os.ReadFile(filepath.Join(dir, "conffiles")); strings.TrimSpace(string(b)) != "/etc/default/mesh" {
			t.Errorf("conffiles = %q, want /etc/default/mesh", b)
		}
		secretMaking := regexp.MustCompile(`urandom|openssl|pwgen|mkpasswd|uuidgen|password\s*>|\bsystemctl (--\S+ )*(enable|start)\b`)
		for _, s := range []string{"postinst", "prerm", "postrm"} {
			b, err := os.ReadFile(filepath.Join(dir, s))
			if err != nil {
				t.Fatalf("maintainer script %s missing: %v", s, err)
			}
			for _, l := range strings.Split(string(b), "\n") {
				l = strings.TrimSpace(l)
				if strings.HasPrefix(l, "#") || strings.HasPrefix(l, "echo ") {
					continue
				}
				if secretMaking.MatchString(l) {
					t.Errorf("%s makes a secret or enables the service: %q", s, l)
				}
			}
		}
	})

	// dpkg installs into a throwaway root with --root; the maintainer
	// scripts run without chroot (--force-script-chrootless) and with
	// DPKG_ROOT set, as when bootstrapping another root: they must touch
	// only that root, never the running system (no systemctl call at all).
	t.Run("install and remove in a throwaway root", func(t *testing.T) {
		root := t.TempDir()
		for _, d := range []string{"info", "updates", "triggers"} {
			os.MkdirAll(filepath.Join(root, "var/lib/dpkg", d), 0o755)
		}
		for _, f := range []string{"status", "available"} {
			os.WriteFile(filepath.Join(root, "var/lib/dpkg", f), nil, 0o644)
		}
		path, log := fakeSystemctl(t)
		env := []string{"PATH=" + path}
		dpkgRoot := func(args ...string) string {
			return run(t, env, dpkg, append([]string{"--root=" + root, "--force-script-chrootless", "--force-not-root"}, args...)...)
		}
		out := dpkgRoot("-i", deb)
		if !strings.Contains(out, "/etc/mesh/mesh.key") {
			t.Errorf("install does not say where the mesh key goes:\n%s", out)
		}
		status := func() string { return run(t, nil, dpkg, "--root="+root, "-l", "mesh") }
		if s := status(); !strings.Contains(s, "ii  mesh") {
			t.Fatalf("not installed:\n%s", s)
		}
		installed := tree(t, root)
		for p := range installed {
			if strings.HasPrefix(p, "/var") {
				delete(installed, p)
			}
		}
		compareTree(t, installed, installedFiles("/usr"))

		// What the daemon makes at run time.
		os.WriteFile(filepath.Join(root, "etc/cni/net.d/10-mesh.conflist"), []byte("{}"), 0o644)
		os.MkdirAll(filepath.Join(root, "var/lib/mesh"), 0o700)
		os.WriteFile(filepath.Join(root, "var/lib/mesh/identity.json"), []byte("{}"), 0o600)

		dpkgRoot("-r", "mesh")
		if _, err := os.Stat(filepath.Join(root, "etc/cni/net.d/10-mesh.conflist")); !os.IsNotExist(err) {
			t.Errorf("remove left the daemon's CNI config: %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, "var/lib/mesh/identity.json")); err != nil {
			t.Errorf("remove (not purge) dropped the state: %v", err)
		}
		if _, err := os.Stat(filepath.Join(root, "usr/bin/mesh")); !os.IsNotExist(err) {
			t.Errorf("remove left /usr/bin/mesh: %v", err)
		}
		dpkgRoot("-P", "mesh")
		left := []string{}
		for p := range tree(t, root) {
			if !strings.HasPrefix(p, "/var/lib/dpkg") && p != "/var" && p != "/var/lib" {
				left = append(left, p)
			}
		}
		if len(left) != 0 {
			t.Errorf("purge left %v", left)
		}
		if s, _ := exec.Command(dpkg, "--root="+root, "-s", "mesh").CombinedOutput(); !strings.Contains(string(s), "not installed") {
			t.Errorf("after purge dpkg -s says:\n%s", s)
		}
		if c := calls(log); c != "" {
			t.Errorf("scripts called systemctl while installing into another root: %q", c)
		}
	})
}

// TestDebScriptsOnRunningSystem runs the package's maintainer scripts as
// dpkg runs them on a live system (DPKG_ROOT unset, systemd running), on
// a simulated host (its own /run, /etc/cni, /var/lib/mesh and netns) with
// a systemctl that records its calls.
func TestDebScriptsOnRunningSystem(t *testing.T) {
	testnet.RequireRoot(t)
	testnet.RequireCommand(t, "dpkg-deb")
	deb := buildDeb(t)
	scripts := t.TempDir()
	run(t, nil, "dpkg-deb", "-e", deb, scripts)
	h := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "deb"}).Hosts()[0]
	if err := os.MkdirAll(h.Path("/run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	path, log := fakeSystemctl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	script := func(name string, args ...string) string {
		t.Helper()
		out, err := h.Run(ctx, "env", append([]string{"-u", "DPKG_ROOT", "PATH=" + path, "sh", filepath.Join(scripts, name)}, args...)...)
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return out
	}
	tests := []struct {
		name  string
		run   func() string
		calls string
	}{
		{"fresh install enables nothing", func() string { return script("postinst", "configure", "") }, "daemon-reload"},
		{"upgrade restarts a running daemon", func() string { return script("postinst", "configure", "1.0.0") }, "daemon-reload\ntry-restart mesh.service"},
		{"upgrade keeps the daemon running", func() string { return script("prerm", "upgrade", "1.2.4") }, ""},
		{"remove leaves the mesh, stops and disables", func() string { return script("prerm", "remove") }, "mesh leave\nstop mesh.service\n--no-reload disable mesh.service"},
		{"postrm remove", func() string { return script("postrm", "remove") }, "daemon-reload"},
	}
	conflist := h.Path("/etc/cni/net.d/10-mesh.conflist")
	os.MkdirAll(filepath.Dir(conflist), 0o755)
	os.WriteFile(conflist, []byte("{}"), 0o644)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(log)
			out := tt.run()
			if c := calls(log); c != tt.calls {
				t.Fatalf("systemctl calls %q, want %q; output:\n%s", c, tt.calls, out)
			}
		})
	}
	if _, err := os.Stat(conflist); !os.IsNotExist(err) {
		t.Errorf("postrm remove left the CNI config: %v", err)
	}
	state := h.Path("/var/lib/mesh")
	os.WriteFile(filepath.Join(state, "wireguard.key"), []byte("k"), 0o600)
	script("postrm", "purge")
	if entries, _ := os.ReadDir(state); len(entries) != 0 {
		t.Errorf("purge left state: %v", entries)
	}
}

// debEntry turns dpkg-deb's permission column into an entry.
func debEntry(perm, target string) entry {
	var m fs.FileMode
	switch perm[0] {
	case 'd':
		m = fs.ModeDir
	case 'l':
		return entry{mode: fs.ModeSymlink, target: target}
	}
	for i, c := range perm[1:10] {
		if c != '-' {
			m |= 1 << (8 - i)
		}
	}
	return entry{mode: m}
}
