package fastdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	wgtun "golang.zx2c4.com/wireguard/tun"

	meshtun "github.com/meshnet/mesh/fastdp/tun"
)

// userspaceImpl runs wireguard-go in this process on a persistent TUN device
// and serves the standard UAPI socket (/var/run/wireguard/<dev>.sock), so the
// same wgctrl code configures it as the kernel module, and `wg show` works.
type userspaceImpl struct {
	name string
	ns   *netNS
	nl   *netlink.Handle
	log  *slog.Logger

	dev    *device.Device // nil until the first ensure, and after stop
	limits *limits        // packets in flight in dev (memory_linux.go)
	uapi   net.Listener
	done   chan struct{} // closed when routineUAPI returns

	connMu sync.Mutex
	conns  map[net.Conn]struct{} // open UAPI connections, closed by stop
	connWG sync.WaitGroup
}

func (u *userspaceImpl) kind() string { return ModeUserspace }

func (u *userspaceImpl) ensure(mtu int) (netlink.Link, func() error, error) {
	if u.dev != nil {
		l, err := linkByName(u.nl, u.name)
		if err == nil && l.Type() == "tuntap" {
			return l, nil, nil
		}
		// Someone deleted the link under the running device: start over on a
		// new one rather than serving a dead file descriptor.
		u.log.Warn("TUN device disappeared, restarting wireguard-go", "err", err)
		u.stop()
	}

	l, err := linkByName(u.nl, u.name)
	switch {
	case err == nil && l.Type() != "tuntap":
		return nil, nil, fmt.Errorf("link %q exists and is a %s, not a TUN device", u.name, l.Type())
	case err != nil && !isNotFound(err):
		return nil, nil, fmt.Errorf("failed to look up link %q: %w", u.name, err)
	}

	var (
		tdev    wgtun.Device
		created bool
	)
	if err := u.ns.do(func() (err error) {
		tdev, created, err = meshtun.Open(u.name, mtu)
		return err
	}); err != nil {
		if errors.Is(err, meshtun.ErrBusy) {
			return nil, nil, fmt.Errorf("%w (is another mesh daemon running?)", err)
		}
		return nil, nil, err
	}
	removeLink := func() error {
		if !created {
			return nil
		}
		l, err := linkByName(u.nl, u.name)
		if err != nil {
			if isNotFound(err) {
				return nil
			}
			return err
		}
		return u.nl.LinkDel(l)
	}

	// Bound wireguard-go's memory (see memory_linux.go): the packets in
	// flight in each direction, and the heap growth between collections.
	setSoftMemoryLimit(u.log)
	lim := newLimits(inflightPackets)
	dev := device.NewDevice(&limitedTUN{Device: tdev, l: lim}, &limitedBind{Bind: u.bind(), l: lim}, wgLogger(u.log))
	uapi, err := listenUAPI(u.name)
	if err != nil {
		dev.Close()
		_ = removeLink()
		return nil, nil, err
	}
	u.dev, u.uapi, u.done, u.limits = dev, uapi, make(chan struct{}), lim
	u.conns = map[net.Conn]struct{}{}
	go u.routineUAPI(uapi, dev, u.done)
	if created {
		u.log.Info("created TUN device")
	} else {
		u.log.Info("adopted existing TUN device")
	}

	l, err = linkByName(u.nl, u.name)
	if err != nil {
		u.stop()
		_ = removeLink()
		return nil, nil, fmt.Errorf("failed to look up link %q after opening it: %w", u.name, err)
	}
	return l, func() error { u.stop(); return removeLink() }, nil
}

// bind returns the UDP side of wireguard-go. The sockets are opened whenever
// the device comes up, from wireguard-go's goroutines, so in the namespace
// of an arbitrary thread. That is right when the data plane works in the
// process's own namespace (a normal daemon). In another namespace nsBind
// opens the sockets there. Either is then wrapped in limitedBind (the memory
// bound), so wireguard-go never sees the plain StdNetBind and does not start
// its sticky-socket route listener (it only recognizes that type), which
// matters only to multi-homed hosts whose routes change: there wireguard-go
// drops a stale source address when a handshake retry times out (seconds)
// instead of right at the route change.
func (u *userspaceImpl) bind() conn.Bind {
	b := conn.NewStdNetBind()
	if u.ns.isProcessNS() {
		return b
	}
	return &nsBind{Bind: b, ns: u.ns}
}

// listenUAPI serves /var/run/wireguard/<name>.sock. UAPIOpen refuses a
// socket another live process answers on.
func listenUAPI(name string) (net.Listener, error) {
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, fmt.Errorf("failed to open UAPI socket for %q: %w", name, err)
	}
	defer f.Close() // UAPIListen holds its own copy of the descriptor
	l, err := ipc.UAPIListen(name, f)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on UAPI socket for %q: %w", name, err)
	}
	return l, nil
}

// routineUAPI accepts UAPI connections until the listener is closed (by stop,
// or by wireguard-go's watcher when the socket file is deleted).
func (u *userspaceImpl) routineUAPI(l net.Listener, dev *device.Device, done chan struct{}) {
	defer close(done)
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		u.connMu.Lock()
		if u.conns == nil { // stopping
			u.connMu.Unlock()
			c.Close()
			return
		}
		u.conns[c] = struct{}{}
		u.connWG.Add(1)
		u.connMu.Unlock()
		go func() {
			defer u.connWG.Done()
			dev.IpcHandle(c) // closes c
			u.connMu.Lock()
			delete(u.conns, c)
			u.connMu.Unlock()
		}()
	}
}

// stop ends wireguard-go and the UAPI server. The TUN device stays: it is
// persistent, and closing our descriptor only drops its carrier.
func (u *userspaceImpl) stop() {
	if u.dev == nil {
		return
	}
	_ = u.uapi.Close() // also removes the socket file
	<-u.done
	u.connMu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.conns = nil
	u.connMu.Unlock()
	u.connWG.Wait()
	u.dev.Close()
	outPeak, outTimeouts := u.limits.out.stats()
	inPeak, inTimeouts := u.limits.in.stats()
	u.log.Debug("wireguard-go stopped", "peakOutbound", outPeak, "outboundWaitTimeouts", outTimeouts,
		"peakInbound", inPeak, "inboundWaitTimeouts", inTimeouts)
	u.dev, u.uapi, u.done, u.limits = nil, nil, nil, nil
}

func (u *userspaceImpl) close() error {
	u.stop()
	return nil
}

// nsBind opens wireguard-go's UDP sockets in the data plane's namespace.
// Without it they would land in the namespace of whatever thread runs the
// goroutine that brings the device up.
type nsBind struct {
	conn.Bind
	ns *netNS
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = b.ns.do(func() error {
		var oerr error
		fns, actual, oerr = b.Bind.Open(port)
		return oerr
	})
	return fns, actual, err
}

// wgLogger routes wireguard-go's logs to slog: its verbose level is chatty
// per-packet detail, so it goes to debug. wireguard-go abbreviates public
// keys and never logs private ones.
func wgLogger(log *slog.Logger) *device.Logger {
	l := log.With("component", "wireguard-go")
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) { l.Error(fmt.Sprintf(format, args...)) },
	}
}
