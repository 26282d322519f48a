package fastdp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/netnstest"
)

// The prober records answers to its echo requests, only for the addresses
// it was last told to probe, and none for an address nothing answers.
func TestProber(t *testing.T) {
	ns := netnstest.New(t)
	var p *Prober
	if err := netnstest.Do(ns, func() (err error) { p, err = NewProber(); return err }); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	answered, silent := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.1") // no route in the test netns
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.Probe([]netip.Addr{answered, silent})
		r := p.Results()
		if !r[answered].LastReply.IsZero() {
			if r[answered].RTT <= 0 || r[answered].RTT > 10*time.Second {
				t.Fatalf("RTT %v", r[answered].RTT)
			}
			if !r[silent].LastReply.IsZero() {
				t.Fatalf("an address without a route answered: %+v", r[silent])
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
}
