package testnet

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on a fresh OS thread that is in the host's network namespace
// (only: not its mount namespace) and returns fn's error. Sockets fn creates
// stay in the host's namespace after Do returns. fn must not rely on other
// goroutines it starts being in the namespace. Do blocks until fn returns.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: its namespace is not restored, so Go
		// must destroy the thread when this goroutine ends.
		runtime.LockOSThread()
		fd, err := unix.Open(h.NetNS(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("failed to open netns of host %q: %w", h.Name, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("failed to enter netns of host %q: %w", h.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial connects from inside the host, like net.Dialer.DialContext. address
// must be numeric (no DNS in the hosts). It blocks until connected, failed or
// ctx is done.
func (h *Host) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("failed to dial %s %s from %s: %w", network, address, h.Name, err)
	}
	return c, nil
}

// Listen listens inside the host, like net.Listen. It does not block.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %s %s in %s: %w", network, address, h.Name, err)
	}
	return l, nil
}

// ListenPacket opens a packet socket inside the host, like net.ListenPacket.
// It does not block.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %s %s in %s: %w", network, address, h.Name, err)
	}
	return c, nil
}

// nsID is the "<kind>:[<inode>]" string readlink gives for /proc/PID/ns/<kind>
// of the namespace the file path refers to.
func nsID(path, kind string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("failed to stat namespace file %q: %w", path, err)
	}
	return fmt.Sprintf("%s:[%d]", kind, st.Ino), nil
}
