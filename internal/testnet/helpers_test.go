package testnet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// echoPort is where startEcho listens in every host.
const echoPort = 7000

// startEcho runs a TCP and a UDP echo server on h's port echoPort until t
// ends.
func startEcho(t *testing.T, h *Host) {
	t.Helper()
	addr := net.JoinHostPort(h.Addr.String(), strconv.Itoa(echoPort))
	l, err := h.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := h.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// reach checks that from gets an echo over TCP and over UDP from to's echo
// server within timeout.
func reach(from *Host, to netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addr := net.JoinHostPort(to.String(), strconv.Itoa(echoPort))
	for _, network := range []string{"tcp", "udp"} {
		c, err := from.Dial(ctx, network, addr)
		if err != nil {
			return err
		}
		err = echo(ctx, c)
		c.Close()
		if err != nil {
			return fmt.Errorf("%s echo from %s to %s: %w", network, from.Name, addr, err)
		}
	}
	return nil
}

func echo(ctx context.Context, c net.Conn) error {
	deadline, _ := ctx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	msg := []byte("hello")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != string(msg) {
		return fmt.Errorf("got %q, want %q", buf, msg)
	}
	return nil
}

// ctxT is a context bounded by a short timeout, cancelled when t ends.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
