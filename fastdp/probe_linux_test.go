package fastdp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
)

// The prober records answers to its echo requests, only for the addresses
// it was last told to track, and none for an address nothing answers, one
// of the other family, or one it was not told to send to; per family,
// through the kernel's own echo answers on the loopback.
func TestProber(t *testing.T) {
	tests := []struct {
		name                    string
		v6                      bool
		answered, silent, other string // silent: no route in the test netns
		unsent                  string // tracked, not sent to (127.0.0.2 would answer)
	}{
		{name: "ICMP", answered: "127.0.0.1", silent: "192.0.2.1", other: "::1", unsent: "127.0.0.2"},
		{name: "ICMPv6", v6: true, answered: "::1", silent: "2001:db8::1", other: "127.0.0.1", unsent: "2001:db8::2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := netnstest.New(t)
			var p *Prober
			if err := netnstest.Do(ns, func() (err error) { p, err = NewProber(tt.v6); return err }); err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			answered, silent, other := netip.MustParseAddr(tt.answered), netip.MustParseAddr(tt.silent), netip.MustParseAddr(tt.other)
			unsent := netip.MustParseAddr(tt.unsent)
			deadline := time.Now().Add(10 * time.Second)
			for {
				p.Probe([]netip.Addr{answered, silent, other, unsent}, []netip.Addr{answered, silent, other})
				r := p.Results()
				if !r[answered].LastReply.IsZero() {
					if r[answered].RTT <= 0 || r[answered].RTT > 10*time.Second {
						t.Fatalf("RTT %v", r[answered].RTT)
					}
					if !r[silent].LastReply.IsZero() {
						t.Fatalf("an address without a route answered: %+v", r[silent])
					}
					if !r[other].LastReply.IsZero() {
						t.Fatalf("an address of the other family was probed: %+v", r[other])
					}
					if _, ok := r[unsent]; !ok || !r[unsent].LastReply.IsZero() {
						t.Fatalf("an address only tracked: %+v (tracked: %v), want tracked and not probed", r[unsent], ok)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no answer from %s within 10 s: %+v", answered, r)
				}
				time.Sleep(200 * time.Millisecond)
			}
			p.Probe([]netip.Addr{silent}, nil)
			if r := p.Results(); len(r) != 1 {
				t.Fatalf("results of addresses no longer probed kept: %+v", r)
			}
		})
	}
}

// The prober's ICMPv6 socket gets echo replies alone: an echo request to
// ::1 reaches every raw ICMPv6 socket before its answer does, and the
// filter keeps it (and neighbour discovery) out.
func TestProberICMPv6Filter(t *testing.T) {
	ns := netnstest.New(t)
	err := netnstest.Do(ns, func() error {
		conn, err := net.ListenIP(echo6.network, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := passOnly(conn, echo6.reply); err != nil {
			return err
		}
		p := &Prober{proto: echo6, id: 1}
		if _, err := conn.WriteToIP(p.request(1, time.Now()), &net.IPAddr{IP: net.IPv6loopback}); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		n, _, err := conn.ReadFromIP(buf)
		if err != nil {
			return fmt.Errorf("no echo reply within 5 s: %w", err)
		}
		if n < 1 || buf[0] != echo6.reply {
			return fmt.Errorf("the filtered socket got ICMPv6 type %d first, want only echo replies (%d)", buf[0], echo6.reply)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
