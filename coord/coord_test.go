package coord

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// world is a synthetic network: nodes in sites, a round trip within a site
// and between each pair of sites, plus each node's own access delay.
type world struct {
	site   []int
	access []float64   // ms, added to every round trip of the node
	across [][]float64 // ms between sites (symmetric), within: across[s][s]
}

func (w world) rtt(i, j int) float64 {
	return w.across[w.site[i]][w.site[j]] + w.access[i] + w.access[j]
}

// run lets every node sample random peers for rounds rounds, with load
// noise (only ever added: load delays, never speeds up), and returns the
// clients.
func (w world) run(t *testing.T, rounds int, noise float64) []*Client {
	t.Helper()
	n := len(w.site)
	cl := make([]*Client, n)
	for i := range cl {
		cl[i] = New(DefaultConfig(), fmt.Sprint("node", i))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range rounds {
		for i := range n {
			j := rng.IntN(n - 1)
			if j >= i {
				j++
			}
			r := w.rtt(i, j) + rng.Float64()*noise*w.rtt(i, j)
			// What j publishes: its coordinate through the wire form.
			remote, ok := FromWire(cl[j].Get().Wire())
			if !ok {
				t.Fatalf("node %d publishes an invalid coordinate %+v", j, cl[j].Get())
			}
			if err := cl[i].Update(fmt.Sprint("node", j), remote, time.Duration(r*float64(time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
	}
	return cl
}

func TestConverges(t *testing.T) {
	three := world{
		site:   []int{0, 0, 0, 1, 1, 1, 2, 2, 2},
		access: make([]float64, 9),
		across: [][]float64{{1, 40, 80}, {40, 1, 60}, {80, 60, 1}},
	}
	slow := world{ // one node behind a slow link, the rest on one LAN
		site:   make([]int, 6),
		access: []float64{0.2, 0.2, 0.2, 0.2, 0.2, 50},
		across: [][]float64{{0.5}},
	}
	for _, tc := range []struct {
		name  string
		w     world
		noise float64
		// within: every estimate of a pair whose round trip is at
		// least 10 ms is within this share of it; below 10 ms,
		// within 10 ms.
		within float64
	}{
		{"three sites", three, 0, 0.25},
		{"three sites, load noise", three, 0.5, 0.35},
		{"one slow access link", slow, 0, 0.25},
		{"one slow access link, load noise", slow, 0.5, 0.35},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := tc.w.run(t, 300, tc.noise)
			n := len(cl)
			for i := range n {
				for j := i + 1; j < n; j++ {
					est, want := Distance(cl[i].Get(), cl[j].Get()), tc.w.rtt(i, j)
					if want >= 10 && math.Abs(est-want) > tc.within*want {
						t.Errorf("nodes %d-%d: estimated %.1f ms, round trip %.1f ms", i, j, est, want)
					}
					if want < 10 && math.Abs(est-want) > 10 {
						t.Errorf("nodes %d-%d: estimated %.1f ms, round trip %.1f ms", i, j, est, want)
					}
				}
				if c := cl[i].Get(); !c.Valid() || c.Error > 0.5 {
					t.Errorf("node %d: %+v, want valid with an error below 0.5", i, c)
				}
			}
		})
	}
}

// The order the relay choice depends on: a relay on the slow link
// estimates farther than one on the LAN, from every node's view.
func TestSlowNodeFarthest(t *testing.T) {
	w := world{site: make([]int, 5), access: []float64{0.1, 0.1, 0.1, 0.1, 30}, across: [][]float64{{0.3}}}
	cl := w.run(t, 200, 1)
	for i := range 4 {
		for j := range 4 {
			if i == j {
				continue
			}
			if fast, slow := Distance(cl[i].Get(), cl[j].Get()), Distance(cl[i].Get(), cl[4].Get()); fast+20 > slow {
				t.Errorf("from node %d: node %d at %.1f ms, the slow node at %.1f ms", i, j, fast, slow)
			}
		}
	}
}

func TestUpdateRefuses(t *testing.T) {
	far := Origin()
	far.Vec[0] = MaxComponent + 1
	nan := Origin()
	nan.Height = math.NaN()
	inf := Origin()
	inf.Vec[1] = math.Inf(-1)
	lowErr := Origin()
	lowErr.Error = -1
	for _, tc := range []struct {
		name   string
		remote Coordinate
		rtt    time.Duration
		want   error
	}{
		{"beyond the bound", far, time.Millisecond, ErrInvalidRemote},
		{"NaN height", nan, time.Millisecond, ErrInvalidRemote},
		{"infinite component", inf, time.Millisecond, ErrInvalidRemote},
		{"negative error", lowErr, time.Millisecond, ErrInvalidRemote},
		{"zero height", Coordinate{Error: 1}, time.Millisecond, ErrInvalidRemote},
		{"zero round trip", Origin(), 0, ErrInvalidRTT},
		{"negative round trip", Origin(), -time.Second, ErrInvalidRTT},
		{"a stall, not a path", Origin(), time.Minute, ErrInvalidRTT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := New(DefaultConfig(), "a")
			before := cl.Get()
			if err := cl.Update("b", tc.remote, tc.rtt); !errors.Is(err, tc.want) {
				t.Fatalf("Update = %v, want %v", err, tc.want)
			}
			if cl.Get() != before || len(cl.samples) != 0 {
				t.Errorf("a refused sample changed the client: %+v, %d filters", cl.Get(), len(cl.samples))
			}
		})
	}
}

// A peer that publishes the most extreme valid coordinates, with the
// smallest error, and answers at the longest round trip allowed or at
// once, never pushes the coordinate out of bounds.
func TestHostileRemoteStaysInBounds(t *testing.T) {
	cl := New(DefaultConfig(), "a")
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 5000 {
		var r Coordinate
		for d := range r.Vec {
			r.Vec[d] = []float64{-MaxComponent, MaxComponent, 0}[rng.IntN(3)]
		}
		r.Height = []float64{MinHeight, MaxComponent}[rng.IntN(2)]
		rtt := []time.Duration{time.Microsecond, DefaultConfig().MaxRTT}[rng.IntN(2)]
		if err := cl.Update(fmt.Sprint("evil", i%3), r, rtt); err != nil {
			t.Fatal(err)
		}
		if c := cl.Get(); !c.Valid() {
			t.Fatalf("after %d samples: %+v is out of bounds", i+1, c)
		}
		if _, ok := FromWire(cl.Get().Wire()); !ok {
			t.Fatalf("after %d samples: the wire form of %+v does not read back", i+1, cl.Get())
		}
	}
}

func TestFilterBounded(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPeers = 3
	cl := New(cfg, "a")
	for i := range 3 {
		if err := cl.Update(fmt.Sprint("p", i), Origin(), time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Update("p3", Origin(), time.Millisecond); !errors.Is(err, ErrTooManyPeers) {
		t.Fatalf("a fourth peer: %v, want %v", err, ErrTooManyPeers)
	}
	for range 20 {
		cl.Update("p0", Origin(), time.Millisecond)
	}
	if n := len(cl.samples["p0"]); n != cfg.Window {
		t.Errorf("p0's filter holds %d samples, want the window of %d", n, cfg.Window)
	}
	cl.Retain(func(p string) bool { return p == "p1" })
	if len(cl.samples) != 1 {
		t.Errorf("after Retain: %d filters, want 1", len(cl.samples))
	}
	if err := cl.Update("p3", Origin(), time.Millisecond); err != nil {
		t.Errorf("after Retain, a new peer: %v", err)
	}
}

// The least of the window counts: a burst of load on one host does not
// move the coordinate away.
func TestFilterTakesTheLeast(t *testing.T) {
	peer := Origin()
	peer.Vec[0], peer.Error = 5, minError // a converged peer 5 ms away
	a := New(DefaultConfig(), "a")
	b := New(DefaultConfig(), "a")
	for range 50 {
		a.Update("p", peer, 5*time.Millisecond)
		b.Update("p", peer, 5*time.Millisecond)
	}
	for range 4 { // a stalls: four answers 200 ms late
		a.Update("p", peer, 200*time.Millisecond)
		b.Update("p", peer, 5*time.Millisecond)
	}
	if m := Moved(b.Get(), a.Get()); m > 0.5 {
		t.Errorf("four late answers moved the coordinate %.2f ms", m)
	}
}

func TestWire(t *testing.T) {
	c := Coordinate{Vec: [Dims]float64{1.24, -300.05, 0}, Height: 2.5, Error: 0.3}
	got, ok := FromWire(c.Wire())
	if !ok || math.Abs(got.Vec[0]-1.2) > 1e-9 || math.Abs(got.Vec[1]+300.1) > 1e-9 && math.Abs(got.Vec[1]+300.0) > 1e-9 || got.Height != 2.5 || got.Error != 0.3 {
		t.Errorf("FromWire(%v) = %+v, %v", c.Wire(), got, ok)
	}
	if w := Origin().Wire(); len(w) != WireLen {
		t.Errorf("wire form of the origin %v, want %d numbers", w, WireLen)
	}
	if _, ok := FromWire(Origin().Wire()); !ok {
		t.Error("the origin does not read back")
	}
	for _, tc := range []struct {
		name string
		w    []int
	}{
		{"empty", nil},
		{"short", []int{1, 2, 3}},
		{"long", []int{1, 2, 3, 4, 5, 6}},
		{"component beyond the bound", []int{100_001, 0, 0, 1, 0}},
		{"height zero", []int{0, 0, 0, 0, 500}},
		{"error beyond the bound", []int{0, 0, 0, 1, 1501}},
		{"negative error", []int{0, 0, 0, 1, -1}},
		{"huge", []int{math.MaxInt, 0, 0, 1, 0}},
		{"huge negative", []int{math.MinInt, 0, 0, 1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, ok := FromWire(tc.w); ok {
				t.Errorf("FromWire(%v) = %+v, want refused", tc.w, c)
			}
		})
	}
}

func FuzzFromWire(f *testing.F) {
	f.Add(0, 0, 0, 1, 1500)
	f.Add(-100000, 100000, 5, 100000, 0)
	f.Fuzz(func(t *testing.T, a, b, c, h, e int) {
		co, ok := FromWire([]int{a, b, c, h, e})
		if !ok {
			return
		}
		if !co.Valid() || math.IsNaN(Distance(co, Origin())) || math.IsInf(Distance(co, co), 0) {
			t.Fatalf("accepted %+v", co)
		}
		back, ok := FromWire(co.Wire())
		if !ok || back != co {
			t.Fatalf("%+v does not round-trip: %+v, %v", co, back, ok)
		}
	})
}
