package fastdp

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netNS is the network namespace a data plane works in. Netlink handles are
// bound to it when they are made (netlink.NewHandleAt); everything else that
// depends on the namespace of the calling thread (sockets, /dev/net/tun,
// /proc/sys/net) goes through do.
type netNS struct {
	h    netns.NsHandle
	path string
	// own is set for the caller's namespace: then nothing switches
	// namespaces, as setns needs CAP_SYS_ADMIN, which a daemon that only
	// manages its own host's network should not have to be given.
	own bool
}

// openNetNS opens the namespace at path, or that of the calling thread when
// path is empty. The caller must close it.
func openNetNS(path string) (*netNS, error) {
	var (
		h   netns.NsHandle
		err error
	)
	if path == "" {
		h, err = netns.Get()
	} else {
		h, err = netns.GetFromPath(path)
	}
	if err != nil {
		name := path
		if name == "" {
			name = "current"
		}
		return nil, fmt.Errorf("failed to open network namespace %q: %w", name, err)
	}
	return &netNS{h: h, path: path, own: path == ""}, nil
}

func (n *netNS) String() string {
	if n.path == "" {
		return n.h.String()
	}
	return n.path
}

func (n *netNS) close() error { return n.h.Close() }

// do runs fn on a fresh OS thread that has joined the namespace. The thread
// is never returned to the Go scheduler (the goroutine exits while still
// locked, which makes the runtime terminate it), so a failure to switch back
// can never leak the namespace into unrelated goroutines.
func (n *netNS) do(fn func() error) error {
	if n.own {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.h); err != nil {
			errc <- fmt.Errorf("failed to enter network namespace %s: %w", n, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// initialNS identifies the namespace the process started in, read during
// package initialization, which runs on the main thread before any code
// could have moved a thread elsewhere. Later, /proc/self/ns/net cannot be
// trusted: it is the main thread's, and the Go runtime may have run (and
// wedged) a namespace-switching goroutine on the main thread.
var initialNS = func() (st unix.Stat_t) {
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return unix.Stat_t{}
	}
	return st
}()

// isProcessNS reports whether n is the namespace the process started in.
func (n *netNS) isProcessNS() bool {
	var st unix.Stat_t
	if initialNS.Ino == 0 || unix.Fstat(int(n.h), &st) != nil {
		return false
	}
	return st.Dev == initialNS.Dev && st.Ino == initialNS.Ino
}

// netlinkHandle returns a netlink handle bound to the namespace. It opens
// rtnetlink only: without a family, netlink opens XFRM and netfilter
// sockets too, and on a kernel that has no xfrm_user module loaded and
// cannot load one (no modprobe, as in the VM of e2e/kernel, or a container
// with module loading off) the whole handle then fails with "protocol not
// supported", although fastdp uses neither.
func (n *netNS) netlinkHandle() (*netlink.Handle, error) {
	if n.own {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(n.h, unix.NETLINK_ROUTE)
}
