package testnet

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestSite: two networks joined by a router that forwards only between
// the pairs Allow names. A host added to the first network after the site
// also gets the route.
func TestSite(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 2})
	site := n.AddSite(t, netip.MustParsePrefix("198.51.100.0/24"))
	a1, a2 := n.Hosts()[0], n.Hosts()[1]
	b1, b2 := site.AddHost(t), site.AddHost(t)
	a3 := n.AddHost(t)
	if b1.Name != "host3" || b1.Addr.String() != "198.51.100.13" || a3.Addr.String() != "192.0.2.15" {
		t.Fatalf("hosts %v", n.Hosts())
	}
	for _, h := range n.Hosts() {
		startEcho(t, h)
	}
	// Within each network, everyone reaches everyone.
	for _, pair := range [][2]*Host{{a1, a2}, {a2, a3}, {a3, a1}, {b1, b2}, {b2, b1}} {
		if err := reach(pair[0], pair[1].Addr, 5*time.Second); err != nil {
			t.Errorf("%s cannot reach %s in its network: %v", pair[0], pair[1], err)
		}
	}
	// Across, nothing until allowed.
	cross := [][2]*Host{{a1, b1}, {b1, a1}, {a3, b2}, {b2, a3}, {a2, b2}}
	for _, pair := range cross {
		if err := reach(pair[0], pair[1].Addr, 500*time.Millisecond); err == nil {
			t.Errorf("%s reaches %s across the router before any Allow", pair[0], pair[1])
		}
	}
	if err := n.Allow(a2, b2); err != nil {
		t.Fatal(err)
	}
	if err := n.Allow(a3, b1); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]*Host{{a2, b2}, {b2, a2}, {a3, b1}, {b1, a3}} {
		if err := reach(pair[0], pair[1].Addr, 5*time.Second); err != nil {
			t.Errorf("%s cannot reach %s through the router: %v", pair[0], pair[1], err)
		}
	}
	for _, pair := range [][2]*Host{{a1, b1}, {b1, a1}, {a2, b1}, {a3, b2}, {b2, a1}} {
		if err := reach(pair[0], pair[1].Addr, 500*time.Millisecond); err == nil {
			t.Errorf("%s reaches %s, a pair the router does not allow", pair[0], pair[1])
		}
	}
	if err := n.Partition([]*Host{a1}, []*Host{b1}); err == nil {
		t.Error("a partition across the router succeeded; partitions cut the first switch only")
	}
}

func TestRouterAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.0/24":    "192.0.2.254",
		"198.51.100.0/24": "198.51.100.254",
		"10.1.0.0/16":     "10.1.255.254",
		"10.2.3.32/27":    "10.2.3.62",
	} {
		if got := routerAddr(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("routerAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestNATSite: a host behind the masquerading router reaches the first
// network, which sees the router's address as the source, and nothing
// from the first network reaches it unless it answers what it sent.
func TestNATSite(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 1})
	site := n.AddNATSite(t, netip.MustParsePrefix("10.9.0.0/24"))
	pub, priv := n.Hosts()[0], site.AddHost(t)
	startEcho(t, pub)
	startEcho(t, priv)
	if err := reach(priv, pub.Addr, 5*time.Second); err != nil {
		t.Fatalf("the NATed host cannot reach out: %v", err)
	}
	if err := reach(pub, priv.Addr, 500*time.Millisecond); err == nil {
		t.Fatal("the public host reaches the NATed host's private address")
	}
	if err := reach(pub, site.PublicAddr(), 500*time.Millisecond); err == nil {
		t.Fatal("the public host reaches an echo server through the router's address, without any outbound first")
	}
	// What the public host sees as the source.
	ln, err := pub.ListenPacket("udp", ":7001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := priv.Dial(ctxT(t), "udp", netip.AddrPortFrom(pub.Addr, 7001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	_, from, err := ln.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := netip.MustParseAddrPort(from.String()).Addr(); got != site.PublicAddr() {
		t.Fatalf("the public host sees the NATed host's packet from %s, want the router's %s", got, site.PublicAddr())
	}
	// The answer to it comes back through the router.
	if _, err := ln.WriteTo([]byte("back"), from); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("the answer did not come back through the NAT: %v", err)
	}
}

// TestNATSitesHolePunch: hosts behind two NAT sites cannot reach each
// other's public address until both have sent to it: then each NAT takes
// the other's packets as answers, and UDP flows both ways, from the port
// each sent from (masquerading keeps it).
func TestNATSitesHolePunch(t *testing.T) {
	RequireRoot(t)
	n := New(t, Options{Hosts: 1})
	sa := n.AddNATSite(t, netip.MustParsePrefix("10.9.0.0/24"))
	sb := n.AddNATSite(t, netip.MustParsePrefix("10.10.0.0/24"))
	if sa.PublicAddr() == sb.PublicAddr() || sa.PublicAddr() == n.RouterAddr() {
		t.Fatalf("public addresses %v and %v (router %v): want three distinct", sa.PublicAddr(), sb.PublicAddr(), n.RouterAddr())
	}
	a, b := sa.AddHost(t), sb.AddHost(t)
	const port = 7002
	la, err := a.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lb, err := b.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	toA := net.UDPAddrFromAddrPort(netip.AddrPortFrom(sa.PublicAddr(), port))
	toB := net.UDPAddrFromAddrPort(netip.AddrPortFrom(sb.PublicAddr(), port))
	buf := make([]byte, 16)
	// sendUntil sends from c to `to` every 100 ms until r receives
	// something or within passes; it returns where that came from.
	sendUntil := func(c, r net.PacketConn, to net.Addr, within time.Duration) (net.Addr, error) {
		deadline := time.Now().Add(within)
		for {
			if _, err := c.WriteTo([]byte("hi"), to); err != nil {
				return nil, err
			}
			_ = r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			_, from, err := r.ReadFrom(buf)
			if err == nil {
				return from, nil
			}
			if time.Now().After(deadline) {
				return nil, err
			}
		}
	}
	// a alone, for a second: b's NAT drops every packet. (Repeated, so
	// that a's NAT has surely seen one before b sends: the first packet
	// of each host may wait for neighbour resolution.)
	if _, err := sendUntil(la, lb, toB, time.Second); err == nil {
		t.Fatal("b received a's packet before b sent anything to a")
	}
	// b sends to a: a's NAT has a's packets to b on record, so this is an
	// answer, and from now on each NAT lets the other in.
	from, err := sendUntil(lb, la, toA, 5*time.Second)
	if err != nil {
		t.Fatalf("a did not receive b's packet: %v", err)
	}
	if got := netip.MustParseAddrPort(from.String()); got != netip.AddrPortFrom(sb.PublicAddr(), port) {
		t.Fatalf("a sees b's packet from %v, want %v (b's NAT keeps the port)", got, netip.AddrPortFrom(sb.PublicAddr(), port))
	}
	if _, err := sendUntil(la, lb, toB, 5*time.Second); err != nil {
		t.Fatalf("b did not receive a's packet after the punch: %v", err)
	}
}
