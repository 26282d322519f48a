package main

import (
	"debug/buildinfo"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshnet/mesh/internal/testnet"
)

// TestKubeBuildSplit checks make build's two builds of this program: mesh
// links no Kubernetes client (the idle memory that saves is measured in
// docs/performance.md) and runs mesh-kube for `launch --kube`, with the
// same arguments and environment (the password in MESH_PASSWORD
// included); mesh-kube runs --kube itself.
func TestKubeBuildSplit(t *testing.T) {
	bin := testnet.BuildMake(t)
	mesh, meshKube := filepath.Join(bin, "mesh"), filepath.Join(bin, kubeProgram)

	t.Run("dependencies", func(t *testing.T) {
		for _, tt := range []struct {
			path     string
			wantKube bool
		}{{mesh, false}, {meshKube, true}} {
			info, err := buildinfo.ReadFile(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			var k8s []string
			for _, d := range info.Deps {
				if strings.HasPrefix(d.Path, "k8s.io/") {
					k8s = append(k8s, d.Path)
				}
			}
			if got := len(k8s) > 0; got != tt.wantKube {
				t.Errorf("%s links Kubernetes modules %v, want them linked: %v", filepath.Base(tt.path), k8s, tt.wantKube)
			}
		}
	})

	t.Run("version", func(t *testing.T) {
		for _, tt := range []struct {
			path string
			want bool
		}{{mesh, false}, {meshKube, true}} {
			out, err := exec.Command(tt.path, "version", "-o", "json").Output()
			if err != nil {
				t.Fatalf("%s version: %v", tt.path, err)
			}
			var v versionInfo
			if err := json.Unmarshal(out, &v); err != nil || v.Kubernetes != tt.want {
				t.Errorf("%s version -o json = %s (%v), want kubernetes %v", filepath.Base(tt.path), out, err, tt.want)
			}
		}
	})

	// launch runs prog launch --kube in a throwaway state dir, with the
	// password in the environment and a kubeconfig that does not exist,
	// and returns its output: it must fail.
	launch := func(t *testing.T, prog string, path string) string {
		t.Helper()
		dir := t.TempDir()
		cmd := exec.Command(prog, "launch", "--kube", "--kubeconfig", filepath.Join(dir, "no-kubeconfig"),
			"--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "mesh.sock"),
			"--dataplane", "none", "--no-cni", "--metrics-addr", "", "--name", "kube-split-test")
		cmd.Env = []string{"PATH=" + path, "MESH_PASSWORD=a password of the test mesh", "MESH_NAME=kube-split-test"}
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("%s launch --kube without a kubeconfig succeeded: %s", prog, out)
		}
		if strings.Contains(string(out), "a password of the test mesh") {
			t.Errorf("the password shows in the output: %s", out)
		}
		return string(out)
	}

	t.Run("mesh runs mesh-kube", func(t *testing.T) {
		// The kubeconfig's error comes from the Kubernetes client, which
		// only mesh-kube has; without the password in its environment it
		// would have refused to start before.
		out := launch(t, mesh, t.TempDir())
		if !strings.Contains(out, "no-kubeconfig") || strings.Contains(out, "no Kubernetes support") {
			t.Errorf("mesh launch --kube did not reach mesh-kube's Kubernetes client: %s", out)
		}
	})

	t.Run("mesh-kube in PATH", func(t *testing.T) {
		dir, path := t.TempDir(), t.TempDir()
		copyFile(t, mesh, filepath.Join(dir, "mesh"))
		copyFile(t, meshKube, filepath.Join(path, kubeProgram))
		if out := launch(t, filepath.Join(dir, "mesh"), path); !strings.Contains(out, "no-kubeconfig") {
			t.Errorf("mesh did not find mesh-kube in PATH: %s", out)
		}
	})

	t.Run("mesh-kube missing", func(t *testing.T) {
		dir := t.TempDir()
		copyFile(t, mesh, filepath.Join(dir, "mesh"))
		if out := launch(t, filepath.Join(dir, "mesh"), t.TempDir()); !strings.Contains(out, "--kube needs mesh-kube") {
			t.Errorf("without mesh-kube: %s, want the missing program named", out)
		}
	})

	t.Run("mesh-kube without Kubernetes", func(t *testing.T) {
		// A mesh-kube built like mesh must fail, not run itself forever.
		dir := t.TempDir()
		copyFile(t, mesh, filepath.Join(dir, "mesh"))
		copyFile(t, mesh, filepath.Join(dir, kubeProgram))
		if out := launch(t, filepath.Join(dir, "mesh"), t.TempDir()); !strings.Contains(out, "has no Kubernetes support either") {
			t.Errorf("with a mesh-kube lacking Kubernetes: %s", out)
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
