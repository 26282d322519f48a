package testnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDelayLink(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ping")
	n := New(t, Options{Hosts: 3})
	h := n.Hosts()
	a, b, c := h[0], h[1], h[2]
	b.DelayLink(t, 40*time.Millisecond)

	out, err := b.Run(ctxT(t), "ls", "/sys/class/net")
	if err != nil || strings.Join(strings.Fields(out), " ") != "eth0 lo wire0 wire1" {
		t.Errorf("/sys/class/net in %s = %q, %v; want eth0, lo, wire0, wire1", b.Name, out, err)
	}
	out, err = b.Run(ctxT(t), "ip", "-4", "-o", "addr", "show")
	if err != nil || !strings.Contains(out, "eth0    inet "+b.Addr.String()+"/24") || strings.Contains(out, "wire") {
		t.Errorf("IPv4 addresses of %s: %q, %v; want %s/24 on eth0 alone", b.Name, out, err, b.Addr)
	}
	out, err = b.Run(ctxT(t), "ip", "route", "show", "default")
	if err != nil || !strings.Contains(out, "dev eth0") {
		t.Errorf("default route of %s: %q, %v; want it on eth0", b.Name, out, err)
	}

	// A round trip to b crosses its delay twice.
	if avg := pingAvg(t, a, b.Addr); avg < 75*time.Millisecond || avg >= 400*time.Millisecond {
		t.Errorf("ping %s -> %s: average %v, want [75ms, 400ms)", a.Name, b.Name, avg)
	}
	if avg := pingAvg(t, a, c.Addr); avg >= 20*time.Millisecond {
		t.Errorf("ping %s -> %s (no delay): average %v, want < 20ms", a.Name, c.Name, avg)
	}

	// TCP and UDP both ways, and a bulk transfer: the veths hand over GSO
	// packets with checksums to be filled in, which must survive the
	// forwarder.
	startEcho(t, a)
	startEcho(t, b)
	for _, pair := range [][2]*Host{{a, b}, {b, a}} {
		if err := reach(pair[0], pair[1].Addr, 5*time.Second); err != nil {
			t.Errorf("%s cannot reach %s: %v", pair[0], pair[1], err)
		}
	}
	if err := bulkEcho(a, b.Addr, 4<<20, 30*time.Second); err != nil {
		t.Error(err)
	}
}

// TestDelayLinkIPv6: an IPv6 underlay and a non-default MTU carry over to
// the new eth0.
func TestDelayLinkIPv6(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ping")
	n := New(t, Options{Hosts: 2, Subnet: netip.MustParsePrefix("fd98::/64"), MTU: 1400})
	a, b := n.Hosts()[0], n.Hosts()[1]
	b.DelayLink(t, 20*time.Millisecond)
	for _, l := range []string{"eth0", "wire0", "wire1"} {
		out, err := b.Run(ctxT(t), "cat", "/sys/class/net/"+l+"/mtu")
		if err != nil || strings.TrimSpace(out) != "1400" {
			t.Errorf("%s mtu in %s = %q, %v; want 1400", l, b.Name, out, err)
		}
	}
	out, err := b.Run(ctxT(t), "ip", "-6", "-o", "addr", "show", "scope", "global")
	if err != nil || !strings.Contains(out, "eth0    inet6 "+b.Addr.String()+"/64") || strings.Contains(out, "wire") {
		t.Errorf("IPv6 addresses of %s: %q, %v; want %s/64 on eth0 alone", b.Name, out, err, b.Addr)
	}
	if avg := pingAvg(t, a, b.Addr); avg < 35*time.Millisecond || avg >= 400*time.Millisecond {
		t.Errorf("ping %s -> %s: average %v, want [35ms, 400ms)", a.Name, b.Name, avg)
	}
	startEcho(t, b)
	if err := bulkEcho(a, b.Addr, 1<<20, 30*time.Second); err != nil {
		t.Error(err)
	}
}

var pingRTT = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/[0-9.]+/[0-9.]+ ms`)

// pingAvg pings to from from five times and returns the average round trip.
func pingAvg(t *testing.T, from *Host, to netip.Addr) time.Duration {
	t.Helper()
	out, err := from.Run(ctxT(t), "ping", "-c", "5", "-i", "0.2", "-W", "5", to.String())
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	m := pingRTT.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no round trip times in the output of ping: %s", out)
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("ping average %q: %v", m[1], err)
	}
	avg := time.Duration(ms * float64(time.Millisecond))
	t.Logf("ping %s -> %s: average %v", from.Name, to, avg)
	return avg
}

// bulkEcho sends size random bytes through to's echo server over TCP and
// checks that they all come back, within timeout.
func bulkEcho(from *Host, to netip.Addr, size int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", net.JoinHostPort(to.String(), strconv.Itoa(echoPort)))
	if err != nil {
		return err
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("bulk echo from %s to %s: %w", from.Name, to, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("bulk echo from %s to %s: write: %w", from.Name, to, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("bulk echo from %s to %s: data came back changed", from.Name, to)
	}
	return nil
}
