// Command whoami is a test server and client for the end-to-end tests: the
// server answers every TCP connection and UDP datagram with the source
// address it sees, so a test learns whether and how a packet was
// translated on the way; the client prints the answer.
//
//	whoami serve ADDR           # TCP and UDP on ADDR until killed
//	whoami get tcp|udp ADDR [SRC]  # print the server's answer, exit 1 on none;
//	                               # SRC binds the client to that source IP
//	whoami dial ADDR               # TCP connect only (any server), exit 1 on failure
package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

// timeout bounds a client's wait for the answer and a server's per
// connection work, so nothing hangs a test.
const timeout = 3 * time.Second

func main() {
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "serve":
		err = serve(os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "get":
		err = get(os.Args[2], os.Args[3], "")
	case len(os.Args) == 3 && os.Args[1] == "dial":
		var c net.Conn
		if c, err = net.DialTimeout("tcp", os.Args[2], timeout); err == nil {
			c.Close()
			fmt.Println("connected")
		}
	case len(os.Args) == 5 && os.Args[1] == "get":
		err = get(os.Args[2], os.Args[3], os.Args[4])
	default:
		err = fmt.Errorf("usage: whoami serve ADDR | whoami get tcp|udp ADDR [SRC] | whoami dial ADDR")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "whoami:", err)
		os.Exit(1)
	}
}

func serve(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(from.(*net.UDPAddr).IP.String()), from)
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(timeout))
			c.Write([]byte(c.RemoteAddr().(*net.TCPAddr).IP.String()))
		}()
	}
}

func get(network, addr, src string) error {
	d := net.Dialer{Timeout: timeout}
	if src != "" {
		ip := net.ParseIP(src)
		if ip == nil {
			return fmt.Errorf("invalid source IP %q", src)
		}
		if network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: ip}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: ip}
		}
	}
	c, err := d.Dial(network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := c.Write([]byte("who")); err != nil {
			return err
		}
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("no answer from %s %s: %w", network, addr, err)
	}
	fmt.Println(string(buf[:n]))
	return nil
}
