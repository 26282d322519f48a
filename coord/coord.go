// Package coord estimates the round trip between any two nodes of the mesh
// from round trips each node measures to a few peers: network coordinates
// in the manner of Vivaldi (Dabek et al., SIGCOMM 2004), with a height for
// each node's access link.
//
// The relay choice needs a latency for every link of every candidate path,
// and every node of a path must compute the same choice from the same
// data (docs/routing.md). A node cannot publish its round trip to every
// peer (memberlist's metadata holds 512 bytes), but it can publish one
// coordinate: the distance between two nodes' coordinates estimates their
// round trip, and every node reads the same coordinates from gossip.
//
// The package is pure: no clock, no I/O. The daemon feeds it the probes'
// round trips (package peer's Paths) and publishes the coordinate.
package coord

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// Dims is the number of Euclidean dimensions; the height is one more.
// Vivaldi's evaluation found two or three dimensions plus a height as
// good as more for Internet latencies; three keep the wire form short.
const Dims = 3

// Bounds on a coordinate's parts, in milliseconds: a coordinate beyond them
// is invalid (a received one is ignored, a computed one clamped), so that
// no peer can make an estimate overflow or turn NaN.
const (
	// MaxComponent bounds each Euclidean component: 10 s.
	MaxComponent = 10_000.0
	// MinHeight keeps heights positive, as the update divides by
	// distances: 0.1 ms, the wire's unit (a height that rounds to 0
	// would read as out of bounds).
	MinHeight = 0.1
	// MaxError is a coordinate's error at the start: it knows nothing.
	MaxError = 1.5
	// minError keeps a converged node's weight from reaching 0, where it
	// would never move again.
	minError = 0.01
)

// Coordinate is a node's position; distances are round trips in
// milliseconds.
type Coordinate struct {
	Vec    [Dims]float64
	Height float64
	// Error is the node's own estimate of its relative error, from
	// MaxError (new) down towards minError: it weighs how far a sample
	// moves each side.
	Error float64
}

// Origin is a node's coordinate before its first sample.
func Origin() Coordinate { return Coordinate{Height: MinHeight, Error: MaxError} }

// Valid says whether c lies within the bounds: every part finite, each
// component within MaxComponent, the height within [MinHeight,
// MaxComponent], the error within [0, MaxError].
func (c Coordinate) Valid() bool {
	for _, v := range c.Vec {
		if math.IsNaN(v) || math.Abs(v) > MaxComponent {
			return false
		}
	}
	return !math.IsNaN(c.Height) && c.Height >= MinHeight && c.Height <= MaxComponent &&
		!math.IsNaN(c.Error) && c.Error >= 0 && c.Error <= MaxError
}

// Distance is the estimated round trip between a and b in milliseconds:
// the Euclidean distance plus both heights. It is symmetric, which the
// relay choice needs (a path and its reverse cost the same).
func Distance(a, b Coordinate) float64 {
	return euclid(a, b) + a.Height + b.Height
}

// Moved is how far c moved from was: the Euclidean distance plus the
// change of height, in milliseconds. The daemon republishes its
// coordinate only once it moved far enough.
func Moved(was, c Coordinate) float64 {
	return euclid(was, c) + math.Abs(was.Height-c.Height)
}

func euclid(a, b Coordinate) float64 {
	var s float64
	for i := range a.Vec {
		d := a.Vec[i] - b.Vec[i]
		s += d * d
	}
	return math.Sqrt(s)
}

// Config tunes a Client.
type Config struct {
	// ErrorGain (Vivaldi's c_e) is how fast the error estimate follows
	// the samples; PositionGain (c_c) how far a sample moves the
	// coordinate, both scaled by the relative confidence of the two ends.
	ErrorGain, PositionGain float64
	// Window is how many recent round trips per peer the filter keeps;
	// a sample counts as the least of them. Load on either host only
	// adds delay, so the least of a few is the path's own latency.
	Window int
	// MaxRTT: longer samples are refused (a probe answered that late
	// measured a stall, not the path).
	MaxRTT time.Duration
	// MaxPeers bounds the filters kept; samples from further peers are
	// refused until Retain drops some.
	MaxPeers int
}

// DefaultConfig returns the settings the daemon uses.
func DefaultConfig() Config {
	return Config{ErrorGain: 0.25, PositionGain: 0.25, Window: 8, MaxRTT: 10 * time.Second, MaxPeers: 4096}
}

// Errors of Update; the sample is not used.
var (
	ErrInvalidRemote = errors.New("remote coordinate out of bounds")
	ErrInvalidRTT    = errors.New("round trip out of bounds")
	ErrTooManyPeers  = errors.New("too many peers tracked")
)

// Client is one node's coordinate and its per-peer filters. Safe for
// concurrent use; no method blocks on anything but the client's mutex.
type Client struct {
	cfg     Config
	mu      sync.Mutex
	c       Coordinate
	samples map[string][]float64 // peer -> recent round trips, ms, oldest first
	rng     *rand.Rand
}

// New returns a client at the origin. seed makes the direction taken away
// from a peer at the same position reproducible; nodes use their name, so
// that two new nodes do not move the same way.
func New(cfg Config, seed string) *Client {
	h := fnv.New64a()
	h.Write([]byte(seed))
	s := h.Sum64()
	return &Client{cfg: cfg, c: Origin(), samples: map[string][]float64{}, rng: rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))}
}

// Get returns the current coordinate.
func (cl *Client) Get() Coordinate {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.c
}

// Update moves the coordinate by one measured round trip to peer, whose
// published coordinate is remote. A remote coordinate out of bounds, or a
// round trip of zero or beyond MaxRTT, is refused with an error and
// changes nothing.
func (cl *Client) Update(peer string, remote Coordinate, rtt time.Duration) error {
	if !remote.Valid() {
		return fmt.Errorf("coordinate of %q: %w", peer, ErrInvalidRemote)
	}
	if rtt <= 0 || rtt > cl.cfg.MaxRTT {
		return fmt.Errorf("round trip %v to %q: %w", rtt, peer, ErrInvalidRTT)
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	s, ok := cl.samples[peer]
	if !ok && len(cl.samples) >= cl.cfg.MaxPeers {
		return fmt.Errorf("round trip to %q: %w (%d)", peer, ErrTooManyPeers, cl.cfg.MaxPeers)
	}
	s = append(s, float64(rtt)/float64(time.Millisecond))
	if len(s) > max(1, cl.cfg.Window) {
		s = s[len(s)-max(1, cl.cfg.Window):]
	}
	cl.samples[peer] = s
	cl.c = cl.step(cl.c, remote, slices.Min(s))
	return nil
}

// Retain forgets the filters of peers for which keep is false (gone from
// the membership), which bounds them by the members.
func (cl *Client) Retain(keep func(peer string) bool) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for p := range cl.samples {
		if !keep(p) {
			delete(cl.samples, p)
		}
	}
}

// step is Vivaldi's update of c by a round trip of rtt milliseconds to a
// node at remote: c moves along the line from remote, by a share of the
// estimate's error weighted by how sure c is against how sure remote is.
func (cl *Client) step(c, remote Coordinate, rtt float64) Coordinate {
	dist := Distance(c, remote)
	w := c.Error / (c.Error + max(remote.Error, minError))
	es := math.Abs(dist-rtt) / rtt
	c.Error = clamp(cl.cfg.ErrorGain*w*es+c.Error*(1-cl.cfg.ErrorGain*w), minError, MaxError)
	force := cl.cfg.PositionGain * w * (rtt - dist)

	// The unit vector from remote to c, height included: the Euclidean
	// part over the whole distance, and the heights' share of it. Two
	// nodes at the same place part in a random direction.
	var diff [Dims]float64
	mag := euclid(c, remote)
	if mag < 1e-9 {
		var n float64
		for n < 1e-9 {
			n = 0
			for i := range diff {
				diff[i] = cl.rng.Float64()*2 - 1
				n += diff[i] * diff[i]
			}
			n = math.Sqrt(n)
		}
		for i := range diff {
			diff[i] /= n
		}
		mag = 1
	} else {
		for i := range diff {
			diff[i] = c.Vec[i] - remote.Vec[i]
		}
	}
	total := mag + c.Height + remote.Height
	for i := range c.Vec {
		c.Vec[i] = clamp(c.Vec[i]+force*diff[i]/total, -MaxComponent, MaxComponent)
	}
	c.Height = clamp(c.Height+force*(c.Height+remote.Height)/total, MinHeight, MaxComponent)
	return c
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }
