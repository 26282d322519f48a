//go:build e2ek8s

package k8se2e

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshnet/mesh/tools/mkimage/ociimage"
)

// Test image names. They are full names under "localhost", which runtimes
// keep as they are, and are never pulled: pods use imagePullPolicy Never.
const (
	pauseImage   = "localhost/mesh-e2e-pause:local"
	busyboxImage = "localhost/mesh-e2e-busybox:local"
)

// busyboxPath is Debian's busybox-static.
const busyboxPath = "/bin/busybox"

// busyboxApplets are linked in the busybox image; pods use them.
var busyboxApplets = []string{"sh", "ls", "cat", "echo", "sleep", "ping", "nc", "wget", "httpd",
	"ip", "hostname", "ps", "kill", "true", "false", "grep", "timeout", "mkdir"}

// buildTestImages writes the pause and busybox image tarballs into dir and
// returns their paths.
func buildTestImages(ctx context.Context, dir string) ([]string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "pause-bin"), 0o755); err != nil {
		return nil, err
	}
	pauseBin := filepath.Join(dir, "pause-bin", "pause")
	// whoami (the simulated-host tests' TCP and UDP source reporter) goes
	// into the busybox image: busybox has no UDP client or server.
	whoamiBin := filepath.Join(dir, "pause-bin", "whoami")
	for _, b := range []struct{ out, pkg string }{{pauseBin, "./pause"}, {whoamiBin, "../testdata/whoami"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("failed to build %s: %w: %s", b.pkg, err, out)
		}
	}
	if err := requireStatic(busyboxPath); err != nil {
		return nil, err
	}
	images := []struct {
		name  string
		entry []string
		spec  []ociimage.Entry
	}{
		{pauseImage, []string{"/pause"}, []ociimage.Entry{{Path: "/pause", Source: pauseBin}}},
		{busyboxImage, []string{"/bin/sh"}, append(busyboxEntries(), ociimage.Entry{Path: "/bin/whoami", Source: whoamiBin})},
	}
	var files []string
	for _, im := range images {
		img, err := ociimage.Build(ociimage.Spec{Entries: im.spec, Entrypoint: im.entry,
			Env: []string{"PATH=/bin"}})
		if err != nil {
			return nil, fmt.Errorf("failed to build image %s: %w", im.name, err)
		}
		f := filepath.Join(dir, strings.NewReplacer(":", "_", "/", "_").Replace(im.name)+".tar")
		if err := ociimage.WriteFile(f, im.name, img); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

func busyboxEntries() []ociimage.Entry {
	e := []ociimage.Entry{
		{Path: "/bin/busybox", Source: busyboxPath},
		{Path: "/tmp", Dir: true},
		{Path: "/proc", Dir: true},
		{Path: "/sys", Dir: true},
		{Path: "/dev", Dir: true},
		{Path: "/etc", Dir: true},
		{Path: "/var/www", Dir: true},
	}
	for _, a := range busyboxApplets {
		e = append(e, ociimage.Entry{Path: "/bin/" + a, Link: "busybox"})
	}
	return e
}

// requireStatic fails unless file is a statically linked executable (it
// goes into an image with nothing else).
func requireStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("%s is needed for the busybox test image (Debian package busybox-static): %w", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: install the Debian package busybox-static", file)
		}
	}
	return nil
}

// importTimeout bounds one `ctr images import`.
const importTimeout = 2 * time.Minute
