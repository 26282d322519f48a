// Command attacker is a test helper: what a pod (or an underlay host) with
// CAP_NET_RAW can send, for the isolation tests on simulated hosts. It runs
// in the attacker's network namespace and only ever sends on the interface
// or to the address it is given.
//
//	attacker udp-send -src IP -dst IP -port N -tag T [-n COUNT]  IPv4/UDP with any source (raw socket)
//	attacker udp6-send -src IP -dst IP -port N -tag T [-n COUNT] IPv6/UDP from any source (IPV6_FREEBIND)
//	attacker udp-listen [-net udp6] -port N -for DURATION         print "from IP TAG" per datagram
//	attacker l2-udp -dev IF -dstmac MAC [-srcmac MAC] -src IP -dst IP -port N -tag T  the same in an Ethernet frame to MAC
//	attacker arp -dev IF -claim IP                           gratuitous ARP replies claiming IP
//	attacker ra -dev IF -prefix P/64                         ICMPv6 router advertisements to ff02::1
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: attacker udp-send|udp6-send|l2-udp|udp-listen|arp|ra [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	src := fs.String("src", "", "source address")
	dst := fs.String("dst", "", "destination address")
	port := fs.Int("port", 9999, "UDP port")
	count := fs.Int("n", 5, "packets to send")
	dev := fs.String("dev", "eth0", "interface")
	claim := fs.String("claim", "", "IPv4 address to claim")
	prefix := fs.String("prefix", "2001:db8:1::/64", "prefix to advertise")
	dur := fs.Duration("for", 3*time.Second, "how long to listen")
	tag := fs.String("tag", "x", "udp-send: payload, printed by udp-listen")
	dstMAC := fs.String("dstmac", "", "l2-udp: destination MAC")
	srcMAC := fs.String("srcmac", "", "l2-udp: source MAC (default: the interface's)")
	network := fs.String("net", "udp4", "udp-listen: udp4 or udp6")
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "udp-send":
		err = udpSend(netip.MustParseAddr(*src), netip.MustParseAddr(*dst), *port, *count, *tag)
	case "l2-udp":
		var dmac, smac net.HardwareAddr
		if dmac, err = net.ParseMAC(*dstMAC); err == nil && *srcMAC != "" {
			smac, err = net.ParseMAC(*srcMAC)
		}
		if err == nil {
			err = l2UDP(*dev, dmac, smac, netip.MustParseAddr(*src), netip.MustParseAddr(*dst), *port, *count, *tag)
		}
	case "udp6-send":
		err = udp6Send(netip.MustParseAddr(*src), netip.MustParseAddr(*dst), *port, *count, *tag)
	case "udp-listen":
		err = udpListen(*network, *port, *dur)
	case "arp":
		err = arp(*dev, netip.MustParseAddr(*claim), *count)
	case "ra":
		err = ra(*dev, netip.MustParsePrefix(*prefix), *count)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "attacker:", err)
		os.Exit(1)
	}
}

func csum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// udpSend sends IPv4/UDP datagrams "spoofed" from src with IP_HDRINCL.
func udpSend(src, dst netip.Addr, port, n int, tag string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	pkt := udpPacket(src, dst, port, tag)
	d := dst.As4()
	to := &unix.SockaddrInet4{Addr: d}
	for range n {
		if err := unix.Sendto(fd, pkt, 0, to); err != nil {
			return fmt.Errorf("send to %s: %w", dst, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// udp6Send sends IPv6/UDP datagrams from src, which need not be an address
// of this host (IPV6_FREEBIND): the kernel routes them as its own.
func udp6Send(src, dst netip.Addr, port, n int, tag string) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(context.Background(), "udp6", netip.AddrPortFrom(src, 0).String())
	if err != nil {
		return fmt.Errorf("bind to %s: %w", src, err)
	}
	defer c.Close()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(port)))
	for range n {
		if _, err := c.WriteTo([]byte(tag), to); err != nil {
			return fmt.Errorf("send to %s: %w", to, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// l2UDP sends the datagrams of udpSend in Ethernet frames addressed to
// dstMAC, from srcMAC (nil: dev's), past the kernel's routing.
func l2UDP(dev string, dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, port, n int, tag string) error {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	f := make([]byte, 14)
	copy(f[0:], dstMAC)
	if srcMAC == nil {
		srcMAC = ifi.HardwareAddr
	}
	copy(f[6:], srcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	f = append(f, udpPacket(src, dst, port, tag)...)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], dstMAC)
	for range n {
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			return fmt.Errorf("send frame on %s: %w", dev, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// udpPacket is an IPv4/UDP packet from src to dst:port carrying tag.
func udpPacket(src, dst netip.Addr, port int, tag string) []byte {
	payload := []byte(tag)
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(pkt[12:], s[:])
	copy(pkt[16:], d[:])
	binary.BigEndian.PutUint16(pkt[10:], csum(pkt[:20], 0))
	udp := pkt[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], uint16(port))
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	pseudo := uint32(binary.BigEndian.Uint16(s[:2])) + uint32(binary.BigEndian.Uint16(s[2:])) +
		uint32(binary.BigEndian.Uint16(d[:2])) + uint32(binary.BigEndian.Uint16(d[2:])) + unix.IPPROTO_UDP + uint32(len(udp))
	binary.BigEndian.PutUint16(udp[6:], csum(udp, pseudo))
	return pkt
}

func udpListen(network string, port int, d time.Duration) error {
	c, err := net.ListenPacket(network, fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("listening")
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 1500)
	for {
		k, from, err := c.ReadFrom(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Println("from", from.(*net.UDPAddr).IP, string(buf[:k]))
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arp broadcasts gratuitous ARP replies: "claim is at my MAC".
func arp(dev string, claim netip.Addr, n int) error {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	f := make([]byte, 42)
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	copy(f[0:], bcast)
	copy(f[6:], ifi.HardwareAddr)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
	a := f[14:]
	copy(a, []byte{0, 1, 8, 0, 6, 4, 0, 2})
	ip := claim.As4()
	copy(a[8:], ifi.HardwareAddr)
	copy(a[14:], ip[:])
	copy(a[18:], bcast)
	copy(a[24:], ip[:])
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], bcast)
	for range n {
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			return fmt.Errorf("send ARP on %s: %w", dev, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// ra sends router advertisements (default router, autonomous prefix) to
// all nodes on dev, from dev's link-local address.
func ra(dev string, p netip.Prefix, n int) error {
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
	if err != nil {
		return fmt.Errorf("raw ICMPv6 socket: %w", err)
	}
	defer unix.Close(fd)
	for _, o := range []int{unix.IPV6_MULTICAST_HOPS, unix.IPV6_UNICAST_HOPS} {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, o, 255); err != nil {
			return err
		}
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index); err != nil {
		return err
	}
	m := make([]byte, 16+32+8)
	m[0] = 134                                          // router advertisement; checksum by the kernel
	m[4] = 64                                           // cur hop limit
	binary.BigEndian.PutUint16(m[6:], 1800)             // router lifetime
	o := m[16:]                                         // prefix information
	o[0], o[1], o[2], o[3] = 3, 4, byte(p.Bits()), 0xc0 // on-link, autonomous
	binary.BigEndian.PutUint32(o[4:], 86400)
	binary.BigEndian.PutUint32(o[8:], 14400)
	a := p.Addr().As16()
	copy(o[16:], a[:])
	l := m[48:] // source link-layer address
	l[0], l[1] = 1, 1
	copy(l[2:], ifi.HardwareAddr)
	to := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::1").As16(), ZoneId: uint32(ifi.Index)}
	for range n {
		if err := unix.Sendto(fd, m, 0, to); err != nil {
			return fmt.Errorf("send RA on %s: %w", dev, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
