package cnitest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NewNS creates a throwaway network namespace and returns the path of a file
// it is bind-mounted on (in a temporary directory, never in /run/netns). It
// is unmounted and removed when t ends, which destroys it and every link in
// it. The caller must be root.
func NewNS(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "meshcni-ns-")
	if err != nil {
		t.Fatalf("failed to create netns directory: %v", err)
	}
	path := filepath.Join(dir, "net")
	t.Cleanup(func() {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
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

// Do runs fn on a thread in the netns at path: for sockets, which belong to
// the netns they are created in.
func Do(path string, fn func() error) error {
	fd, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("failed to open netns %q: %w", path, err)
	}
	defer fd.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see NewNS
		if err := netns.Set(fd); err != nil {
			errc <- fmt.Errorf("failed to enter netns %q: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Host is a throwaway "node" netns wired as fastdp wires a node: a bridge
// holding the gateway as a host prefix and the owned range routed to it.
type Host struct {
	NS     string
	Bridge string
	h      *netlink.Handle
}

// NewHost creates a host netns for d and points d's allocations at its
// bridge, named "mtest" and random hex.
func NewHost(t testing.TB, d *FakeDaemon) *Host {
	t.Helper()
	ns := NewNS(t)
	h := Handle(t, ns)
	var b [4]byte
	rand.Read(b[:])
	name := "mtest" + hex.EncodeToString(b[:])
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: DefaultMTU}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("failed to create bridge %q: %v", name, err)
	}
	gw := netip.PrefixFrom(d.Gateway, d.Gateway.BitLen())
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gw)}); err != nil {
		t.Fatalf("failed to add %s to bridge %q: %v", gw, name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatalf("failed to set bridge %q up: %v", name, err)
	}
	r := &netlink.Route{LinkIndex: br.Attrs().Index, Dst: ipNet(d.Owned), Src: net.IP(d.Gateway.AsSlice()), Scope: netlink.SCOPE_LINK}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("failed to route %s to bridge %q: %v", d.Owned, name, err)
	}
	d.SetBridge(name)
	return &Host{NS: ns, Bridge: name, h: h}
}

// Links returns the names of the links in the host netns.
func (h *Host) Links(t testing.TB) []string {
	t.Helper()
	links, err := h.h.LinkList()
	if err != nil {
		t.Fatalf("failed to list links of %q: %v", h.NS, err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// Link returns the link named name in the host netns, or nil.
func (h *Host) Link(name string) netlink.Link {
	l, err := h.h.LinkByName(name)
	if err != nil {
		return nil
	}
	return l
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
