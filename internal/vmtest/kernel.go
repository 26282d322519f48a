package vmtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// MetaPackage is Debian's package that always depends on the current stock
// kernel image (linux-image-6.1.0-N-amd64 on Debian 12).
const MetaPackage = "linux-image-amd64"

// aptTimeout bounds one apt or dpkg command; the kernel package is ~70 MB.
const aptTimeout = 5 * time.Minute

// Kernel is a stock kernel image package extracted into a cache directory.
type Kernel struct {
	// Package and Version name the Debian package, e.g.
	// linux-image-6.1.0-57-amd64 and 6.1.192-3.
	Package, Version string
	// Release is the kernel's release, the name of lib/modules/<release>.
	Release string
	// Dir is where the package was extracted (dpkg -x).
	Dir string
}

// Vmlinuz is the kernel image to boot.
func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }

// ModulesDir is lib/modules/<release> of the package.
func (k *Kernel) ModulesDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

var imagePkgRE = regexp.MustCompile(`^linux-image-(\d[^ ]*-amd64)$`)

// ResolveKernelPackage asks apt which package MetaPackage depends on and
// that package's candidate version. It runs `apt-get update` once when
// apt knows no such package yet (a fresh machine has no lists).
func ResolveKernelPackage(ctx context.Context) (pkg, version, release string, err error) {
	pkg, version, release, err = resolveKernelPackage(ctx)
	if err == nil {
		return pkg, version, release, nil
	}
	if _, uerr := run(ctx, "apt-get", "update", "-qq"); uerr != nil {
		return "", "", "", errors.Join(err, uerr)
	}
	return resolveKernelPackage(ctx)
}

func resolveKernelPackage(ctx context.Context) (pkg, version, release string, err error) {
	out, err := run(ctx, "apt-cache", "depends", MetaPackage)
	if err != nil {
		return "", "", "", err
	}
	for _, l := range strings.Split(out, "\n") {
		dep, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: ")
		if m := imagePkgRE.FindStringSubmatch(dep); ok && m != nil {
			pkg, release = dep, m[1]
			break
		}
	}
	if pkg == "" {
		return "", "", "", fmt.Errorf("apt-cache depends %s names no linux-image-*-amd64 package:\n%s", MetaPackage, out)
	}
	out, err = run(ctx, "apt-cache", "policy", pkg)
	if err != nil {
		return "", "", "", err
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Candidate: "); ok && v != "(none)" {
			return pkg, v, release, nil
		}
	}
	return "", "", "", fmt.Errorf("apt has no candidate version of %s:\n%s", pkg, out)
}

// FetchKernel returns the stock kernel, extracted under cacheDir as
// kernel-<version>. The first call for a version downloads the package with
// `apt-get download` and unpacks it with `dpkg -x` (nothing is installed on
// the machine); later calls find it there. A half-done extraction is never
// used: the directory is renamed into place only when complete.
func FetchKernel(ctx context.Context, cacheDir string) (*Kernel, error) {
	pkg, version, release, err := ResolveKernelPackage(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to find the stock kernel package: %w", err)
	}
	k := &Kernel{Package: pkg, Version: version, Release: release,
		Dir: filepath.Join(cacheDir, "kernel-"+version)}
	if _, err := os.Stat(k.Vmlinuz()); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("failed to create cache directory %q: %w", cacheDir, err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".kernel-")
	if err != nil {
		return nil, fmt.Errorf("failed to create a directory in %q: %w", cacheDir, err)
	}
	defer os.RemoveAll(tmp)
	// apt's sandbox user may not write to tmp; the download is verified
	// by apt against the signed lists all the same.
	if err := os.Chmod(tmp, 0o777); err != nil {
		return nil, fmt.Errorf("failed to open %q to apt: %w", tmp, err)
	}
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-qq", pkg+"="+version)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get download %s=%s: %w: %s", pkg, version, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s left %d .deb files, want 1", pkg, len(debs))
	}
	x := filepath.Join(tmp, "x")
	if _, err := run(ctx, "dpkg", "-x", debs[0], x); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(x, "boot", "vmlinuz-"+release)); err != nil {
		return nil, fmt.Errorf("package %s has no kernel image for %s: %w", pkg, release, err)
	}
	if err := os.Rename(x, k.Dir); err != nil {
		if _, serr := os.Stat(k.Vmlinuz()); serr == nil {
			return k, nil // a concurrent run won the race
		}
		return nil, fmt.Errorf("failed to move the kernel into %q: %w", k.Dir, err)
	}
	return k, nil
}

// run runs a command bounded by aptTimeout and returns its output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, aptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// SharedLibs lists the shared libraries (and the dynamic loader) that the
// dynamically linked programs need, as ldd resolves them on this machine.
// Static programs need none.
func SharedLibs(ctx context.Context, programs ...string) ([]string, error) {
	seen := map[string]bool{}
	var libs []string
	for _, p := range programs {
		out, err := exec.CommandContext(ctx, "ldd", p).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "not a dynamic executable") {
				continue
			}
			return nil, fmt.Errorf("ldd %s: %w: %s", p, err, out)
		}
		paths, err := parseLDD(string(out))
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", p, err)
		}
		for _, l := range paths {
			if !seen[l] {
				seen[l] = true
				libs = append(libs, l)
			}
		}
	}
	return libs, nil
}

// parseLDD extracts the file paths from ldd's output: "name => /path
// (0x...)" for libraries and "/path (0x...)" for the loader; the vDSO has
// no file.
func parseLDD(out string) ([]string, error) {
	var paths []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "linux-vdso") || strings.Contains(l, "statically linked") {
			continue
		}
		if strings.Contains(l, "=> not found") {
			return nil, fmt.Errorf("missing library: %s", l)
		}
		if _, rest, ok := strings.Cut(l, "=> "); ok {
			l = rest
		}
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "/") {
			continue
		}
		paths = append(paths, f[0])
	}
	return paths, sc.Err()
}
