package ipam

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// nopTransport drops everything: for single-peer unit tests.
type nopTransport struct{}

func (nopTransport) Broadcast([]byte)            {}
func (nopTransport) SendTo(string, []byte) error { return nil }

// fakeClock is a manual clock shared by the peers of a test.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func testConfig(t testing.TB, self, prefix string) Config {
	cfg := DefaultConfig()
	cfg.Range = netip.MustParsePrefix(prefix)
	cfg.Self = self
	cfg.SelfID = "id-" + self
	cfg.StateFile = filepath.Join(t.TempDir(), self+".json")
	cfg.Now = newClock().Now
	return cfg
}

func mustNew(t testing.TB, cfg Config, tr Transport) *Allocator {
	t.Helper()
	if tr == nil {
		tr = nopTransport{}
	}
	a, err := New(cfg, tr)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func mustAlloc(t testing.TB, a *Allocator, id, ifn string) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addr, err := a.Allocate(ctx, id, ifn)
	if err != nil {
		t.Fatalf("Allocate(%s, %s): %v", id, ifn, err)
	}
	return addr
}

// indexMismatch says how the allocation indexes disagree (allocs, byOff
// and the sorted offs, see bindLocked), or the cache of other peers'
// reservations disagrees with their infos; "" when they agree.
func (a *Allocator) indexMismatch() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.allocs) != len(a.byOff) || len(a.offs) != len(a.byOff) {
		return fmt.Sprintf("%d allocations, %d offsets, %d sorted offsets", len(a.allocs), len(a.byOff), len(a.offs))
	}
	for k, off := range a.allocs {
		if a.byOff[off] != k {
			return fmt.Sprintf("%v at %d, but offset %d is %v's", k, off, off, a.byOff[off])
		}
	}
	// Checked without sorting the map's keys (every simulation step
	// runs this): strictly increasing, each held, as many as held, so
	// the same set in order.
	for i, off := range a.offs {
		if _, ok := a.byOff[off]; !ok || (i > 0 && a.offs[i-1] >= off) {
			return fmt.Sprintf("sorted offsets %v, offsets held %v", a.offs, slices.Sorted(maps.Keys(a.byOff)))
		}
	}
	// The cache of other peers' reservations, if valid, is what their
	// infos say now: a change that forgot staleReservedLocked shows here.
	// Built as a slice, sorted and compacted, rather than a set: this is
	// the costliest check of a simulation step.
	if a.reservedValid {
		want := make([]uint64, 0, len(a.reservedSorted))
		for name, p := range a.st.peers {
			if name != a.cfg.Self {
				want = append(want, p.Held...)
			}
		}
		slices.Sort(want)
		want = slices.Compact(want)
		if !slices.Equal(a.reservedSorted, want) {
			return fmt.Sprintf("cached reservations %v, other peers hold %v", a.reservedSorted, want)
		}
	}
	return ""
}

// encodeFile is the state file's content (encodeFileTo into a new buffer).
func encodeFile(cfg Config, selfID string, st state, allocs []Allocation, px paxosDurable, gw gateway, floor uint64, signedWire bool) ([]byte, error) {
	var b bytes.Buffer
	if err := encodeFileTo(&b, cfg, selfID, st, allocs, px, gw, floor, signedWire); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
