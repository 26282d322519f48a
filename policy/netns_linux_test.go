package policy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// newNS creates a throwaway network namespace bound on a file in a
// temporary directory, destroyed when t ends, with lo up.
func newNS(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshpolicy-ns-")
	if err != nil {
		t.Fatalf("failed to create netns directory: %v", err)
	}
	path := filepath.Join(dir, "net")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatalf("failed to create netns file: %v", err)
	}
	t.Cleanup(func() {
		unix.Unmount(path, unix.MNT_DETACH)
		os.RemoveAll(dir)
	})
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("failed to unshare netns: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		errc <- unix.Mount(self, path, "", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	nsRun(t, path, "ip", "link", "set", "lo", "up")
	return path
}

// doIn runs fn on a thread in the network namespace at path.
func doIn(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("failed to enter netns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// nsRun runs a command in the network namespace at path and returns its
// output, failing t on error.
func nsRun(t testing.TB, path string, args ...string) string {
	t.Helper()
	out, err := nsExec(path, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func nsExec(path string, args ...string) (string, error) {
	cmd := exec.CommandContext(context.Background(), "nsenter", append([]string{"--net=" + path, "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%v in %s: %w: %s", args, path, err, out)
	}
	return string(out), nil
}

// nftIn returns an applier for the netns at path, its fd closed when t
// ends.
func nftIn(t testing.TB, path string) *NFT {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("failed to open netns %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return NewNFT(nftables.WithNetNSFd(fd))
}
