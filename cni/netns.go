package cni

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// errNotNetNS is wrapped when a path exists but is not a network namespace,
// e.g. the file a runtime leaves behind after unmounting a pod's namespace.
var errNotNetNS = errors.New("not a network namespace")

// nsHandle is a netlink handle bound to one network namespace. Working
// through a bound handle instead of entering the namespace keeps every
// goroutine and OS thread of the plugin in its own namespace.
type nsHandle struct {
	*netlink.Handle
	path string // "" for the plugin's own namespace
	fd   netns.NsHandle
}

// openNS opens the network namespace at path; "" is the plugin's own. The
// caller must close it. A missing path wraps os.ErrNotExist, a path that is
// not a namespace wraps errNotNetNS.
func openNS(path string) (*nsHandle, error) {
	if path == "" {
		// rtnetlink only: see below.
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("failed to open netlink in the current netns: %w", err)
		}
		return &nsHandle{Handle: h, fd: -1}, nil
	}
	fd, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("failed to open netns %q: %w", path, err)
	}
	if err := checkNetNS(int(fd)); err != nil {
		fd.Close()
		return nil, fmt.Errorf("failed to open netns %q: %w", path, err)
	}
	// rtnetlink only: asked for all families, netlink also opens XFRM,
	// which fails where no xfrm_user module is loaded or loadable.
	h, err := netlink.NewHandleAt(fd, unix.NETLINK_ROUTE)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("failed to open netlink in netns %q: %w", path, err)
	}
	return &nsHandle{Handle: h, path: path, fd: fd}, nil
}

// checkNetNS tells a namespace file (nsfs, or procfs for /proc/PID/ns/net on
// old kernels) from any other file.
func checkNetNS(fd int) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("failed to stat: %w", err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return errNotNetNS
	}
	return nil
}

func (n *nsHandle) close() {
	n.Handle.Close()
	if n.fd >= 0 {
		n.fd.Close()
	}
}

func (n *nsHandle) String() string {
	if n.path == "" {
		return "host netns"
	}
	return fmt.Sprintf("netns %q", n.path)
}

// isNotFound reports whether err is netlink's "no such link".
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist)
}
