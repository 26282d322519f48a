package fastdp

import (
	"net"

	"golang.org/x/sys/unix"
)

// passOnly sets the socket's ICMPv6 filter (RFC 3542 section 3.2) to pass
// messages of type t alone. Linux's filter bits are set for the types it
// blocks.
func passOnly(conn *net.IPConn, t byte) error {
	var f unix.ICMPv6Filter
	for i := range f.Data {
		f.Data[i] = ^uint32(0)
	}
	f.Data[t>>5] &^= 1 << (t & 31)
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptICMPv6Filter(int(fd), unix.IPPROTO_ICMPV6, unix.ICMPV6_FILTER, &f)
	}); err != nil {
		return err
	}
	return serr
}
