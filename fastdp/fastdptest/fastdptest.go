// Package fastdptest is a fake fastdp.Dataplane for tests of the code that
// drives the data plane, in the spirit of wireguard-go's tun/tuntest. It
// touches nothing on the host: it validates and records every Set.
package fastdptest

import (
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/meshnet/mesh/fastdp"
)

// Dataplane records the configs it is given. The zero value is not usable;
// call New.
type Dataplane struct {
	mu      sync.Mutex
	kind    string
	sets    []*fastdp.Config
	current *fastdp.Config
	failN   int
	failErr error
	stats   []fastdp.PeerStats
	closed  bool
}

var _ fastdp.Dataplane = (*Dataplane)(nil)

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("fastdptest: data plane is closed")

// New returns a fake of the given kind ("" means "userspace").
func New(kind string) *Dataplane {
	if kind == "" {
		kind = fastdp.ModeUserspace
	}
	return &Dataplane{kind: kind}
}

// Kind returns the kind given to New.
func (d *Dataplane) Kind() string { return d.kind }

// Set records a copy of cfg after validating it as the real data plane
// would. A failure armed with FailNext is returned instead, and the config
// is then not current (as a real Set rolls back).
func (d *Dataplane) Set(ctx context.Context, cfg *fastdp.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c := cfg.Clone()
	d.sets = append(d.sets, c)
	if d.failN > 0 {
		d.failN--
		return d.failErr
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	d.current = c
	return nil
}

// Stats returns what SetStats stored, or else one entry per peer of the
// current config, without handshakes or traffic.
func (d *Dataplane) Stats(ctx context.Context) ([]fastdp.PeerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	if d.stats != nil {
		return slices.Clone(d.stats), nil
	}
	var out []fastdp.PeerStats
	if d.current != nil {
		for _, p := range d.current.Peers {
			out = append(out, fastdp.PeerStats{PublicKey: p.PublicKey, Endpoint: p.Endpoint})
		}
	}
	return out, nil
}

// Close marks the fake closed.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// FailNext makes the next n calls to Set fail with err.
func (d *Dataplane) FailNext(n int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failN, d.failErr = n, err
}

// SetStats fixes what Stats returns.
func (d *Dataplane) SetStats(s []fastdp.PeerStats) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats = slices.Clone(s)
}

// Sets returns every config Set was called with, failed ones included.
func (d *Dataplane) Sets() []*fastdp.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.sets)
}

// SetCount is len(Sets()).
func (d *Dataplane) SetCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sets)
}

// Current is the last config Set accepted, or nil.
func (d *Dataplane) Current() *fastdp.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.current.Clone()
}

// Closed reports whether Close was called.
func (d *Dataplane) Closed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}
