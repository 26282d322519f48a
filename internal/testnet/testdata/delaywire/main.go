// Command delaywire forwards every Ethernet frame between two links, each
// after a fixed delay. testnet's Host.DelayLink puts it between a host's IP
// stack and its switch port: the kernels the tests run on may lack sch_netem,
// so `tc qdisc ... netem delay` is not an option.
//
// Usage: delaywire --a IFNAME --b IFNAME --delay DURATION
//
// It prints "forwarding" to stderr once both links are open, and exits on
// SIGTERM or SIGINT.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// queueLen bounds the frames in flight per direction. A delayed link holds
// delay*rate frames; beyond that bound frames are dropped, like a full
// router queue, rather than growing memory and latency without end.
const queueLen = 4096

// bufLen fits the largest frame a veth hands over: a GSO packet of up to
// 64 KiB (more with BIG TCP) plus the virtio_net_hdr before it.
const bufLen = 1 << 18

type frame struct {
	due  time.Time
	data []byte // virtio_net_hdr followed by the Ethernet frame
}

func main() {
	a := flag.String("a", "", "first link")
	b := flag.String("b", "", "second link")
	delay := flag.Duration("delay", 0, "delay of each frame, in each direction")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("delaywire: ")
	if *a == "" || *b == "" || *a == *b || *delay < 0 || flag.NArg() > 0 {
		log.Fatal("usage: delaywire --a IFNAME --b IFNAME --delay DURATION")
	}
	fa, err := open(*a)
	if err != nil {
		log.Fatal(err)
	}
	fb, err := open(*b)
	if err != nil {
		log.Fatal(err)
	}
	go forward(fa, fb, *delay, *a+" -> "+*b)
	go forward(fb, fa, *delay, *b+" -> "+*a)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	log.Printf("%s <-> %s, delay %v each way", *a, *b, *delay)
	fmt.Fprintln(os.Stderr, "forwarding")
	// Frames still queued are lost, as on a link that is cut; the kernel
	// closes the sockets and drops their promiscuous memberships.
	log.Printf("got %v, exiting", <-sig)
}

// open returns a packet socket bound to link name, receiving every frame
// on it: promiscuous, since most frames are addressed to a MAC address of
// some other link (the host's own eth0 behind the far side, or its peers).
func open(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return -1, fmt.Errorf("link %s: %w", name, err)
	}
	// Protocol 0 until bind: created with ETH_P_ALL, the socket would
	// already queue frames of every link of the namespace.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("packet socket for %s: %w", name, err)
	}
	// A veth passes GSO packets (up to 64 KiB) and packets whose checksum
	// is still to be filled in; the virtio_net_hdr carries both facts
	// from the receiving socket to the sending one, so that the kernel
	// segments and checksums them on the far side as it would have here.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return -1, fmt.Errorf("PACKET_VNET_HDR on %s: %w", name, err)
	}
	// Room for bursts while the reader copies frames out; best effort.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
	if err := unix.Bind(fd, sa); err != nil {
		return -1, fmt.Errorf("bind to %s: %w", name, err)
	}
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		return -1, fmt.Errorf("promiscuous mode on %s: %w", name, err)
	}
	return fd, nil
}

// forward reads frames from the socket from and hands them to a sender on
// to, which sends each once it has waited delay. One FIFO per direction
// keeps the order, since every frame waits the same time.
func forward(from, to int, delay time.Duration, dir string) {
	q := make(chan frame, queueLen)
	go send(q, to, dir)
	buf := make([]byte, bufLen)
	drops := 0
	for {
		// MSG_TRUNC: n is the frame's real length, so that a truncated
		// one is dropped instead of sent cut short.
		n, sa, err := unix.Recvfrom(from, buf, unix.MSG_TRUNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			log.Fatalf("%s: receive: %v", dir, err)
		}
		// The sender's own frames show up as outgoing on its link;
		// forwarding them back would loop them forever.
		if ll, ok := sa.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n > len(buf) {
			log.Printf("%s: dropped a frame of %d bytes, larger than the buffer", dir, n)
			continue
		}
		f := frame{due: time.Now().Add(delay), data: append([]byte(nil), buf[:n]...)}
		select {
		case q <- f:
		default:
			drops++
			if drops == 1 || drops%1000 == 0 {
				log.Printf("%s: queue of %d frames full, %d frames dropped so far", dir, queueLen, drops)
			}
		}
	}
}

// send sends the frames of q on the socket to, each at its due time.
func send(q <-chan frame, to int, dir string) {
	fails := 0
	for f := range q {
		if wait := time.Until(f.due); wait > 0 {
			time.Sleep(wait)
		}
		var err error
		for {
			if _, err = unix.Write(to, f.data); err != unix.EINTR {
				break
			}
		}
		// A link that is down or a full transmit queue loses the frame,
		// as a real wire would; say so, but not for every frame.
		if err != nil {
			fails++
			if fails == 1 || fails%1000 == 0 {
				log.Printf("%s: send: %v (%d frames lost so far)", dir, err, fails)
			}
		}
	}
}

// htons converts a 16-bit protocol number to network byte order, which
// AF_PACKET expects.
func htons(v uint16) uint16 { return v<<8 | v>>8 }
