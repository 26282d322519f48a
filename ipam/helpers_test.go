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
	cfg.ListOwned = func() bool { return true }
	cfg.AckRemovals = func() bool { return true }
	cfg.VouchReclaims = func() bool { return true }
	return cfg
}

// refusals is the count and last description of refusals for reason.
func (a *Allocator) refusals(reason string) (uint64, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.guard.count[reason], a.guard.note[reason]
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
	// Every offset another peer holds is found in the cache (binary
	// search) and marked, and every entry of the cache is marked: the
	// same set, without sorting all the Held lists at every simulation
	// step (a set or a sort made this the costliest check of a step).
	if a.reservedValid {
		if !slices.IsSorted(a.reservedSorted) {
			return fmt.Sprintf("cached reservations not sorted: %v", a.reservedSorted)
		}
		marked := make([]bool, len(a.reservedSorted))
		for name, p := range a.st.peers {
			if name == a.cfg.Self {
				continue
			}
			from := 0
			for _, off := range p.Held {
				i, ok := gallop(a.reservedSorted, from, off)
				from = i
				if !ok {
					return fmt.Sprintf("%s holds offset %d, missing from the cached reservations", name, off)
				}
				marked[i] = true
			}
		}
		for i, m := range marked {
			if !m || (i > 0 && a.reservedSorted[i-1] == a.reservedSorted[i]) {
				return fmt.Sprintf("cached reservation %d (entry %d) is held by no other peer, or twice in the cache", a.reservedSorted[i], i)
			}
		}
	}
	return ""
}

// gallop finds off in sorted s as slices.BinarySearch does, searching
// forward from index from in growing steps first: a peer's Held list is
// sorted and mostly within its own space, so its next offset is usually
// at or just after the previous one's place. An off below s[from] (an
// unsorted list) is searched from the start.
func gallop(s []uint64, from int, off uint64) (int, bool) {
	if from >= len(s) || s[from] > off {
		return slices.BinarySearch(s, off)
	}
	step, hi := 1, from+1
	for hi < len(s) && s[hi] < off {
		from = hi
		hi += step
		step *= 2
	}
	hi = min(hi+1, len(s))
	i, ok := slices.BinarySearch(s[from:hi], off)
	return from + i, ok
}

// encodeFile is the state file's content (encodeFileTo into a new buffer).
func encodeFile(cfg Config, selfID string, st state, allocs []Allocation, px paxosDurable, gw gateway, floor uint64, signedWire bool) ([]byte, error) {
	var b bytes.Buffer
	if err := encodeFileTo(&b, cfg, selfID, st, allocs, px, gw, floor, signedWire, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func TestGallop(t *testing.T) {
	s := []uint64{2, 3, 5, 8, 13, 21, 34, 55, 89}
	for from := range len(s) + 1 {
		for off := uint64(0); off < 100; off++ {
			wi, wok := slices.BinarySearch(s, off)
			if i, ok := gallop(s, from, off); i != wi || ok != wok {
				t.Fatalf("gallop(from %d, %d) = %d, %v; BinarySearch says %d, %v", from, off, i, ok, wi, wok)
			}
		}
	}
}

// vouchLocked makes a's own info vouch for victim's runs in a's ring, as
// if a had found it silent for ReclaimAfter (vouch.go): for tests that
// write a reclaim's tombstones by hand.
func vouchLocked(a *Allocator, victim string) {
	me := a.st.peers[a.cfg.Self]
	runs := a.st.ring.owned(victim)
	if len(runs) == 0 {
		return
	}
	i, found := slices.BinarySearchFunc(me.Vouches, victim, func(v vouch, n string) int { return cmpStr(v.Name, n) })
	if found {
		me.Vouches[i].Runs = unionSpans(me.Vouches[i].Runs, runs)
	} else {
		me.Vouches = slices.Insert(slices.Clone(me.Vouches), i, vouch{Name: victim, Runs: runs})
	}
	me.ListsVouches = true
	a.st.peers[a.cfg.Self] = a.signLocked(a.cfg.Self, me)
}
