package fastdp

import (
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// Memory of the userspace data plane (see docs/performance.md).
//
// wireguard-go on Linux has no bound on its buffers: every packet in flight
// holds a whole device.MaxMessageSize (64 KiB) buffer from a pool that is
// unlimited there (device.PreallocatedBuffersPerPool is 0), however small
// the packet, because with GSO/GRO (batches of conn.IdealBatchSize = 128)
// a buffer may have to hold a coalesced 64 KiB packet. Its queues between
// the readers and the crypto workers hold up to 1024 batches each
// (QueueOutboundSize, QueueInboundSize). When the crypto is the bottleneck,
// as on a small host, those queues fill up to what TCP has in flight: a
// single stream with a 6 MB window is about 4000 segments of 1.4 KB, so
// 4000 x 64 KiB = 250 MiB of buffers, which is what a bare wireguard-go
// grows to. The queued packets are live, so the garbage collector cannot
// help: a soft memory limit alone only makes the GC run continuously.
//
// The constants are compile-time, so instead fastdp wraps the TUN device
// and the UDP bind it gives wireguard-go and bounds the packets in flight
// between them, in each direction: a reader (TUN for outgoing packets, UDP
// for incoming ones) waits while inflightPackets are queued in wireguard-go
// and not yet written out (to UDP, respectively TUN). While it waits the
// packets stay in the kernel's queues (the TUN queue, the UDP socket
// buffer), where a packet costs its size and not 64 KiB, and where an
// overflow is a drop TCP reacts to, as it would with kernel WireGuard.
//
// The accounting cannot see the packets wireguard-go drops by itself (no
// peer for the destination, a failed decryption), so a count could leak; a
// wait therefore ends after inflightWait at the latest and then forgives
// the count. Keepalives and handshakes are sent without being read from
// the TUN device; their releases are clamped at zero.
const (
	// inflightPackets bounds each direction: 256 x 64 KiB = 16 MiB of
	// queued buffers (plus one batch read while under the bound), about
	// 1.5 ms of a 2 Gbit/s stream, enough to keep the crypto workers of a
	// small host busy (measured: docs/performance.md).
	inflightPackets = 256
	// inflightWait bounds one wait of a reader.
	inflightWait = 10 * time.Millisecond
	// softMemoryLimit is the Go runtime's soft memory limit set by the
	// userspace data plane unless GOMEMLIMIT is set. With the packets in
	// flight bounded it only trims what GOGC=100 would let the heap grow
	// to (twice the live heap), so that it rarely makes the GC work; it
	// does not count the binary's mapped text (RssFile).
	softMemoryLimit = 96 << 20
)

// setSoftMemoryLimit sets softMemoryLimit unless a limit is already in
// force (GOMEMLIMIT, or an earlier call), and reports the limit in force.
func setSoftMemoryLimit(log *slog.Logger) int64 {
	cur := debug.SetMemoryLimit(-1)
	if cur != math.MaxInt64 {
		return cur
	}
	debug.SetMemoryLimit(softMemoryLimit)
	log.Debug("set the Go soft memory limit for the userspace data plane", "bytes", softMemoryLimit)
	return softMemoryLimit
}

// inflight counts the packets of one direction between a reader and the
// matching writer of wireguard-go.
type inflight struct {
	budget int
	wake   chan struct{} // a token when the count drops below budget

	mu       sync.Mutex
	n        int
	peak     int
	timeouts uint64
}

func newInflight(budget int) *inflight {
	return &inflight{budget: budget, wake: make(chan struct{}, 1)}
}

// wait blocks while the budget is used up, at most inflightWait.
func (f *inflight) wait() {
	f.mu.Lock()
	full := f.n >= f.budget
	f.mu.Unlock()
	if !full {
		return
	}
	t := time.NewTimer(inflightWait)
	defer t.Stop()
	for {
		select {
		case <-f.wake:
			f.mu.Lock()
			full = f.n >= f.budget
			f.mu.Unlock()
			if !full {
				return
			}
		case <-t.C:
			f.mu.Lock()
			f.n = 0
			f.timeouts++
			f.mu.Unlock()
			return
		}
	}
}

func (f *inflight) add(k int) {
	if k <= 0 {
		return
	}
	f.mu.Lock()
	f.n += k
	f.peak = max(f.peak, f.n)
	f.mu.Unlock()
}

func (f *inflight) done(k int) {
	if k <= 0 {
		return
	}
	f.mu.Lock()
	f.n = max(f.n-k, 0)
	below := f.n < f.budget
	f.mu.Unlock()
	if below {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// stats returns the highest count seen and the number of waits that timed
// out, and resets the peak.
func (f *inflight) stats() (peak int, timeouts uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	peak, timeouts = f.peak, f.timeouts
	f.peak = f.n
	return peak, timeouts
}

// limits are the two directions of one wireguard-go device.
type limits struct {
	out *inflight // read from TUN, not yet sent over UDP
	in  *inflight // received over UDP, not yet written to TUN
}

func newLimits(budget int) *limits {
	return &limits{out: newInflight(budget), in: newInflight(budget)}
}

// limitedTUN is the TUN device as wireguard-go sees it.
type limitedTUN struct {
	wgtun.Device
	l *limits
}

func (t *limitedTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.l.out.wait()
	n, err := t.Device.Read(bufs, sizes, offset)
	t.l.out.add(n)
	return n, err
}

func (t *limitedTUN) Write(bufs [][]byte, offset int) (int, error) {
	n, err := t.Device.Write(bufs, offset)
	// wireguard-go hands its buffers back whatever Write returns.
	t.l.in.done(len(bufs))
	return n, err
}

// limitedBind is the UDP side as wireguard-go sees it.
type limitedBind struct {
	conn.Bind
	l *limits
}

func (b *limitedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, fn := range fns {
		fns[i] = b.receive(fn)
	}
	return fns, actual, err
}

// transportType is the first byte of a WireGuard data message; a message of
// transportEmpty bytes is a keepalive, which never reaches the TUN device.
const (
	transportType  = 4
	transportEmpty = 32
)

func (b *limitedBind) receive(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		b.l.in.wait()
		n, err := fn(packets, sizes, eps)
		data := 0
		for i := range n {
			if sizes[i] > transportEmpty && packets[i][0] == transportType {
				data++
			}
		}
		b.l.in.add(data)
		return n, err
	}
}

func (b *limitedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := b.Bind.Send(bufs, ep)
	b.l.out.done(len(bufs))
	return err
}
