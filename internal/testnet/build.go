package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// binDirPrefix names the directory of os.TempDir() where BuildBinary puts
// the binaries of one test process; CleanupStale removes those of dead ones.
const binDirPrefix = "testnet-bin-"

// buildTimeout bounds one `go build`.
const buildTimeout = 5 * time.Minute

var builds struct {
	mu   sync.Mutex
	dir  string
	pkgs map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// BuildBinary builds the main package pkg (a path relative to the module
// root, e.g. "./cmd/mesh", or an import path) once per test process and
// returns the path of the binary. Concurrent and later calls for the same pkg
// wait for and share the first build (and its error). It blocks for the
// build, at most 5 minutes, and fails t on error. The binaries live in a
// directory of os.TempDir() that CleanupStale removes once this process has
// exited, or RemoveBinaries.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	builds.mu.Lock()
	if builds.pkgs == nil {
		builds.pkgs = map[string]*build{}
	}
	b := builds.pkgs[pkg]
	if b == nil {
		b = &build{}
		builds.pkgs[pkg] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() { b.path, b.err = buildPkg(pkg) })
	if b.err != nil {
		t.Fatalf("failed to build %q: %v", pkg, b.err)
	}
	return b.path
}

// buildDirs returns the module root and a new directory of this process's
// binary directory for one build, named after name.
func buildDirs(name string) (root, sub string, err error) {
	if root, err = moduleRoot(); err != nil {
		return "", "", err
	}
	dir, err := binDir()
	if err != nil {
		return "", "", err
	}
	if sub, err = os.MkdirTemp(dir, name+"-"); err != nil {
		return "", "", fmt.Errorf("failed to create directory for build %q: %w", name, err)
	}
	return root, sub, nil
}

func buildPkg(pkg string) (string, error) {
	name := filepath.Base(strings.TrimSuffix(pkg, "/"))
	if name == "." || name == "/" {
		name = "main"
	}
	// A directory per package keeps the binary's name (a CNI plugin's name
	// matters) while distinct packages with the same base name coexist.
	root, sub, err := buildDirs(name)
	if err != nil {
		return "", err
	}
	out := filepath.Join(sub, name)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.WaitDelay = waitDelay
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build -o %s %s in %s: %w: %s", out, pkg, root, err, o)
	}
	return out, nil
}

// binDir creates, once, this process's binary directory.
func binDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		return builds.dir, nil
	}
	dir, err := os.MkdirTemp("", binDirPrefix)
	if err != nil {
		return "", fmt.Errorf("failed to create binary directory: %w", err)
	}
	if err := writeOwner(dir); err != nil {
		return "", errors.Join(err, os.RemoveAll(dir))
	}
	builds.dir = dir
	return dir, nil
}

// goTool is the go command: the one in PATH, else the one of $GOROOT.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}

// moduleRoot walks up from the working directory (the package directory
// under `go test`) to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("failed to get working directory: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod in %q or any parent", dir)
		}
	}
}

// RemoveBinaries removes the binaries built by BuildBinary in this process.
// Call it from TestMain after m.Run; otherwise they are left until a later
// CleanupStale. Do not call BuildBinary afterwards.
func RemoveBinaries() error {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir == "" {
		return nil
	}
	if err := os.RemoveAll(builds.dir); err != nil {
		return fmt.Errorf("failed to remove binary directory %q: %w", builds.dir, err)
	}
	builds.dir = ""
	return nil
}

// MakeBuildOutputs are the files `make build` must leave in its output
// directory: what README's "Run it" gives a user.
var MakeBuildOutputs = []string{"mesh", "mesh-kube", "mesh-cni", "mesh-dataplane"}

// revisionOutputs are the files every revision's `make build` leaves, the
// previous release's included (it has no mesh-dataplane: its daemon runs
// wireguard-go itself).
var revisionOutputs = []string{"mesh", "mesh-cni"}

var makeBuild struct {
	once sync.Once
	dir  string
	err  error
}

// BuildMake runs the user's build, `make build`, once per test process with
// its output directory (BIN) in this process's binary directory, and returns
// that directory. It fails t if make fails or if any of MakeBuildOutputs is
// missing afterwards, so a test that uses these binaries also notices when
// the user's build lacks one. It blocks for the build, at most 5 minutes.
func BuildMake(t testing.TB) string {
	t.Helper()
	makeBuild.once.Do(func() { makeBuild.dir, makeBuild.err = runMakeBuild() })
	if makeBuild.err != nil {
		t.Fatalf("make build: %v", makeBuild.err)
	}
	return makeBuild.dir
}

func runMakeBuild() (string, error) {
	root, out, err := buildDirs("make")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "-s", "build", "BIN="+out, "GO="+goTool())
	cmd.Dir = root
	cmd.WaitDelay = waitDelay
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("make build BIN=%s in %s: %w: %s", out, root, err, o)
	}
	for _, name := range MakeBuildOutputs {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("make build did not produce an executable %s in %s", name, out)
		}
	}
	return out, nil
}

var revBuilds struct {
	mu   sync.Mutex
	dirs map[string]*build
}

// BuildMakeRevision runs `make build` on the sources of git revision rev of
// this repository (e.g. the previous release, for upgrade tests), once per
// test process, and returns the output directory. The sources are
// extracted with `git archive` into a temporary directory that is removed
// once built; the repository itself (its worktrees, index and refs) is not
// touched. The binaries live in this process's binary directory.
func BuildMakeRevision(t testing.TB, rev string) string {
	t.Helper()
	revBuilds.mu.Lock()
	if revBuilds.dirs == nil {
		revBuilds.dirs = map[string]*build{}
	}
	b := revBuilds.dirs[rev]
	if b == nil {
		b = &build{}
		revBuilds.dirs[rev] = b
	}
	revBuilds.mu.Unlock()
	b.once.Do(func() { b.path, b.err = buildRevision(rev) })
	if b.err != nil {
		t.Fatalf("make build of revision %s: %v", rev, b.err)
	}
	return b.path
}

func buildRevision(rev string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := binDir()
	if err != nil {
		return "", err
	}
	out, err := os.MkdirTemp(dir, "rev-")
	if err != nil {
		return "", fmt.Errorf("failed to create directory for revision %s: %w", rev, err)
	}
	// Under the binary directory, so that CleanupStale also removes it if
	// this process dies mid-build.
	src, err := os.MkdirTemp(dir, "src-")
	if err != nil {
		return "", fmt.Errorf("failed to create source directory for revision %s: %w", rev, err)
	}
	defer os.RemoveAll(src)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", root, rev, src)
	archive.WaitDelay = waitDelay
	if o, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %w: %s", rev, err, o)
	}
	cmd := exec.CommandContext(ctx, "make", "-s", "build", "BIN="+out, "GO="+goTool(), "VERSION="+rev)
	cmd.Dir = src
	cmd.WaitDelay = waitDelay
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("make build BIN=%s of revision %s: %w: %s", out, rev, err, o)
	}
	for _, name := range revisionOutputs {
		if fi, err := os.Stat(filepath.Join(out, name)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("make build of revision %s did not produce an executable %s", rev, name)
		}
	}
	return out, nil
}
