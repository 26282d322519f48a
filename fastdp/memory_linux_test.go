package fastdp

import (
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

func TestInflightWaitsForRelease(t *testing.T) {
	f := newInflight(4)
	f.add(4)
	released := make(chan struct{})
	go func() {
		time.Sleep(2 * time.Millisecond)
		f.done(1)
		close(released)
	}()
	start := time.Now()
	f.wait()
	select {
	case <-released:
	default:
		t.Fatalf("wait returned after %v with the budget used up", time.Since(start))
	}
	if peak, timeouts := f.stats(); peak != 4 || timeouts != 0 {
		t.Fatalf("peak %d, timeouts %d; want 4, 0", peak, timeouts)
	}
}

func TestInflightForgivesLeaks(t *testing.T) {
	f := newInflight(4)
	f.add(10) // packets wireguard-go dropped without writing them
	start := time.Now()
	f.wait()
	if d := time.Since(start); d < inflightWait || d > inflightWait+time.Second {
		t.Fatalf("wait took %v, want about %v", d, inflightWait)
	}
	if _, timeouts := f.stats(); timeouts != 1 {
		t.Fatalf("timeouts %d, want 1", timeouts)
	}
	start = time.Now()
	f.wait() // the count was forgiven
	if d := time.Since(start); d > inflightWait/2 {
		t.Fatalf("second wait took %v", d)
	}
	f.done(100) // keepalives and handshakes: clamped at zero
	f.add(3)
	f.wait()
	if f.n != 3 {
		t.Fatalf("count %d, want 3", f.n)
	}
}

// fakeTUN reads full batches and writes anything.
type fakeTUN struct{ wgtun.Device }

func (fakeTUN) Read(bufs [][]byte, sizes []int, _ int) (int, error) {
	for i := range bufs {
		sizes[i] = 100
	}
	return len(bufs), nil
}

func (fakeTUN) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }

type fakeBind struct{ conn.Bind }

func (fakeBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	recv := func(packets [][]byte, sizes []int, _ []conn.Endpoint) (int, error) {
		// A data packet, a keepalive and a handshake initiation.
		packets[0][0], sizes[0] = transportType, 100
		packets[1][0], sizes[1] = transportType, transportEmpty
		packets[2][0], sizes[2] = 1, 148
		return 3, nil
	}
	return []conn.ReceiveFunc{recv}, 1, nil
}

func (fakeBind) Send([][]byte, conn.Endpoint) error { return nil }

func TestLimitedWrappersCount(t *testing.T) {
	l := newLimits(8)
	tun := &limitedTUN{Device: fakeTUN{}, l: l}
	bind := &limitedBind{Bind: fakeBind{}, l: l}
	bufs := make([][]byte, 5)
	for i := range bufs {
		bufs[i] = make([]byte, 200)
	}
	sizes := make([]int, 5)
	if n, _ := tun.Read(bufs, sizes, 0); n != 5 || l.out.n != 5 {
		t.Fatalf("read %d, outbound count %d; want 5, 5", n, l.out.n)
	}
	_ = bind.Send(bufs[:2], nil)
	if l.out.n != 3 {
		t.Fatalf("outbound count after sending 2: %d, want 3", l.out.n)
	}
	fns, _, _ := bind.Open(0)
	if n, _ := fns[0](bufs, sizes, make([]conn.Endpoint, 5)); n != 3 || l.in.n != 1 {
		t.Fatalf("received %d, inbound count %d; want 3, 1 (only the data packet)", n, l.in.n)
	}
	_, _ = tun.Write(bufs[:1], 0)
	if l.in.n != 0 {
		t.Fatalf("inbound count after writing: %d, want 0", l.in.n)
	}
}
