// Package netnstest gives tests throwaway network namespaces: one helper for
// every package whose tests need a namespace of their own (cni, policy,
// fastdp, fastdp/tun). A namespace is bind-mounted on a file in a temporary
// directory, never in /run/netns, so nothing of a test shows in `ip netns`,
// and it is destroyed, with every link in it, when the test ends. The
// caller must be root.
package netnstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// New creates a network namespace with lo up and returns the path of the
// file it is bound on. It is unmounted and removed when t ends.
func New(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshtest-ns-")
	if err != nil {
		t.Fatalf("failed to create netns directory: %v", err)
	}
	path := filepath.Join(dir, "net")
	t.Cleanup(func() {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			t.Errorf("failed to unmount netns %q: %v", path, err)
		}
		os.RemoveAll(dir)
	})
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatalf("failed to create netns file: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it exits with the goroutine, so the
		// new namespace never leaks into other goroutines.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("failed to unshare the netns: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("failed to bind-mount %s on %q: %w", self, path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	h := Handle(t, path)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("failed to set lo up in %q: %v", path, err)
	}
	return path
}

// Handle returns a netlink handle bound to the netns at path, closed when t
// ends.
func Handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	fd, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("failed to open netns %q: %v", path, err)
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		t.Fatalf("failed to open netlink in netns %q: %v", path, err)
	}
	t.Cleanup(h.Close)
	return h
}

// Do runs fn on a thread in the netns at path and returns its error:
// sockets fn opens belong to that netns and can be used from anywhere
// afterwards. The thread is discarded afterwards, never reused.
func Do(path string, fn func() error) error {
	fd, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("failed to open netns %q: %w", path, err)
	}
	defer fd.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see New
		if err := netns.Set(fd); err != nil {
			errc <- fmt.Errorf("failed to enter netns %q: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Exec runs a command in the netns at path (through nsenter) and returns
// its combined output; the error names the command and the netns.
func Exec(path string, args ...string) (string, error) {
	cmd := exec.CommandContext(context.Background(), "nsenter", append([]string{"--net=" + path, "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), path, err, out)
	}
	return string(out), nil
}

// Run is Exec that fails t on error.
func Run(t testing.TB, path string, args ...string) string {
	t.Helper()
	out, err := Exec(path, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// MoveLink moves the link named name from the netns at from to the one at
// to, for wiring two namespaces with a veth pair made in one of them.
func MoveLink(t testing.TB, from, name, to string) {
	t.Helper()
	h := Handle(t, from)
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("failed to look up %q in %s: %v", name, from, err)
	}
	fd, err := netns.GetFromPath(to)
	if err != nil {
		t.Fatalf("failed to open netns %q: %v", to, err)
	}
	defer fd.Close()
	if err := h.LinkSetNsFd(l, int(fd)); err != nil {
		t.Fatalf("failed to move %q from %s to %s: %v", name, from, to, err)
	}
}
