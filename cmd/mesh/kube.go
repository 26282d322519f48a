package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// kubeProgram is the build of mesh with the Kubernetes client: make build
// leaves it beside mesh, which is built without it (tag mesh_omit_kube):
// the Kubernetes packages' initialisation alone cost an idle daemon about
// 5 MiB of resident memory, and their code 9 MB of binary
// (docs/performance.md, "Idle memory").
const kubeProgram = "mesh-kube"

// execEnv marks a process that mesh started as kubeProgram, so that a
// kubeProgram built without Kubernetes support fails instead of running
// itself again and again.
const execEnv = "MESH_KUBE_EXEC"

// execKube replaces this process with kubeProgram, found beside this
// program or else in PATH, with the same arguments and environment: the
// pid stays the same, which systemd and the DaemonSet's container rely on.
// It returns only on failure. Call it before reading anything the
// daemon reads (the password in the environment in particular).
func execKube(args []string) error {
	if os.Getenv(execEnv) != "" {
		return fmt.Errorf("--kube: %s has no Kubernetes support either (both it and mesh were built with mesh_omit_kube); run make build", os.Args[0])
	}
	path, err := findKube()
	if err != nil {
		return err
	}
	env := append(os.Environ(), execEnv+"=1")
	if err := syscall.Exec(path, append([]string{path, "launch"}, args...), env); err != nil {
		return fmt.Errorf("--kube: failed to run %s: %w", path, err)
	}
	return nil
}

// findKube is kubeProgram beside this program, else in PATH.
func findKube() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), kubeProgram)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("--kube: %w", err)
		}
	}
	p, err := exec.LookPath(kubeProgram)
	if err != nil {
		return "", fmt.Errorf("--kube needs %s, the build of mesh with Kubernetes support, beside %s or in PATH (make build leaves it in bin/, make install installs it): %w", kubeProgram, os.Args[0], err)
	}
	return p, nil
}
