package fastdp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
)

// The prober records answers to its echo requests, only for the addresses
// it was last told to probe, and none for an address nothing answers nor
// for one of the other family; per family, through the kernel's own echo
// answers on the loopback.
func TestProber(t *testing.T) {
	tests := []struct {
		name                    string
		v6                      bool
		answered, silent, other string // silent: no route in the test netns
	}{
		{name: "ICMP", answered: "127.0.0.1", silent: "192.0.2.1", other: "::1"},
		{name: "ICMPv6", v6: true, answered: "::1", silent: "2001:db8::1", other: "127.0.0.1"},
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
			deadline := time.Now().Add(10 * time.Second)
			for {
				p.Probe([]netip.Addr{answered, silent, other})
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
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no answer from %s within 10 s: %+v", answered, r)
				}
				time.Sleep(200 * time.Millisecond)
			}
			p.Probe([]netip.Addr{silent})
			if r := p.Results(); len(r) != 1 {
				t.Fatalf("results of addresses no longer probed kept: %+v", r)
			}
		})
	}
}
