package peer

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
)

// TestDesiredEndToEnd: a relayed node whose traffic can go end to end keeps
// its ranges on its own entry and in the inner device, and the relay's
// entry carries its end-to-end address alone; every condition that is not
// met relays hop by hop as before.
func TestDesiredEndToEnd(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	hopByHop := map[string][]netip.Prefix{"b": pfx("10.36.0.1/32"), "c": pfx("10.36.0.0/14", "10.40.0.0/14", "10.44.0.0/14")}
	tests := []struct {
		name     string
		self, b  string // end-to-end addresses of a and b ("": none)
		via      map[string]string
		held     []HeldAddr
		want     map[string][]netip.Prefix // outer AllowedIPs
		wantE2E  bool
		innerAIP []netip.Prefix // AllowedIPs and Routes of b's inner peer
	}{
		{name: "both ends have one", self: "10.32.0.2", b: "10.36.0.2", via: map[string]string{"b": "c"},
			want:    map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.44.0.0/14"), "c": pfx("10.36.0.2/32", "10.40.0.0/14")},
			wantE2E: true, innerAIP: pfx("10.36.0.0/14", "10.44.0.0/14")},
		{name: "held addresses go end to end too", self: "10.32.0.2", b: "10.36.0.2", via: map[string]string{"b": "c"},
			held:    []HeldAddr{held("b", "10.40.0.10")},
			want:    map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.40.0.10/32", "10.44.0.0/14"), "c": pfx("10.36.0.2/32", "10.40.0.0/14")},
			wantE2E: true, innerAIP: pfx("10.36.0.0/14", "10.40.0.10/32", "10.44.0.0/14")},
		{name: "an end-to-end address held outside its ranges", self: "10.32.0.2", b: "10.40.0.10", via: map[string]string{"b": "c"},
			held:    []HeldAddr{held("b", "10.40.0.10")},
			want:    map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.44.0.0/14"), "c": pfx("10.40.0.0/14", "10.40.0.10/32")},
			wantE2E: true, innerAIP: pfx("10.36.0.0/14", "10.40.0.10/32", "10.44.0.0/14")},
		{name: "direct: no inner device", self: "10.32.0.2", b: "10.36.0.2",
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.0/14", "10.44.0.0/14"), "c": pfx("10.40.0.0/14")}},
		{name: "this node has none", b: "10.36.0.2", via: map[string]string{"b": "c"}, want: hopByHop},
		{name: "the relayed node has none", self: "10.32.0.2", via: map[string]string{"b": "c"}, want: hopByHop},
		{name: "its address outside its space", self: "10.32.0.2", b: "10.40.0.2", via: map[string]string{"b": "c"}, want: hopByHop},
		{name: "its address is another node's held one", self: "10.32.0.2", b: "10.36.0.9", via: map[string]string{"b": "c"},
			held: []HeldAddr{held("c", "10.36.0.9")},
			want: map[string][]netip.Prefix{"b": pfx("10.36.0.1/32"), "c": pfx("10.36.0.0/14", "10.36.0.9/32", "10.40.0.0/14", "10.44.0.0/14")}},
		{name: "its address is its probe address", self: "10.32.0.2", b: "10.36.0.1", via: map[string]string{"b": "c"}, want: hopByHop},
		{name: "its address is this node's", self: "10.32.0.2", b: "10.32.0.2", via: map[string]string{"b": "c"}, want: hopByHop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := w.input()
			in.Via, in.Held = tt.via, tt.held
			in.Nodes[1].Probe = netip.MustParseAddr("10.36.0.1")
			if tt.self != "" {
				in.E2EAddr = netip.MustParseAddr(tt.self)
			}
			if tt.b != "" {
				in.Nodes[1].E2E = netip.MustParseAddr(tt.b)
			}
			d, err := desired(in)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.cfg.Validate(); err != nil {
				t.Fatalf("the data plane would refuse the config: %v", err)
			}
			names := map[crypto.Key]string{w.pubs["b"]: "b", w.pubs["c"]: "c"}
			for _, p := range d.cfg.Peers {
				if got, want := p.AllowedIPs, tt.want[names[p.PublicKey]]; !slices.Equal(got, want) {
					t.Errorf("%s: outer AllowedIPs %v, want %v", names[p.PublicKey], got, want)
				}
			}
			if !tt.wantE2E {
				if d.cfg.Inner != nil || len(d.e2e) != 0 {
					t.Fatalf("inner device %+v, end to end %v; want none", d.cfg.Inner, d.e2e)
				}
				return
			}
			in2 := d.cfg.Inner
			if in2 == nil || !d.e2e["b"] || len(d.e2e) != 1 {
				t.Fatalf("inner device %+v, end to end %v; want one for b", in2, d.e2e)
			}
			bAddr := netip.MustParseAddr(tt.b)
			if in2.Addr != netip.PrefixFrom(in.E2EAddr, 32) || !slices.Equal(in2.Pins, []netip.Prefix{netip.PrefixFrom(bAddr, 32)}) || !slices.Equal(in2.Routes, tt.innerAIP) {
				t.Errorf("inner addr %s, pins %v, routes %v; want %s, [%s/32], %v", in2.Addr, in2.Pins, in2.Routes, tt.self, tt.b, tt.innerAIP)
			}
			// b's probe address stays routed to its direct entry.
			if want := pfx("10.36.0.1/32"); !slices.Equal(in2.Direct, want) {
				t.Errorf("inner direct %v, want b's probe address %v", in2.Direct, want)
			}
			var outerPSK crypto.Key
			for _, p := range d.cfg.Peers {
				if p.PublicKey == w.pubs["b"] {
					outerPSK = p.PresharedKey
				}
			}
			if len(in2.Peers) != 1 {
				t.Fatalf("inner peers %+v, want b alone", in2.Peers)
			}
			p := in2.Peers[0]
			if p.PublicKey != w.pubs["b"] || p.PresharedKey != outerPSK || p.Keepalive != in.Keepalive || p.Endpoint != netip.AddrPortFrom(bAddr, fastdp.DefaultInnerListenPort) || !slices.Equal(p.AllowedIPs, tt.innerAIP) {
				t.Errorf("inner peer %+v; want b's key, preshared key and keepalive, endpoint %s:%d, AllowedIPs %v", p, tt.b, fastdp.DefaultInnerListenPort, tt.innerAIP)
			}
		})
	}
}
