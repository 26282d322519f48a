package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestJournalRecordsAllocations: on disk, an allocation or a release that
// is the only change appends a record instead of rewriting the state file;
// a restart without Close (a SIGKILL) finds every allocation; Close leaves
// the state file alone, in the format a release without journals reads,
// and removes the journal.
func TestJournalRecordsAllocations(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	a := mustNew(t, cfg, nil)
	file, err := os.ReadFile(cfg.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]netip.Addr{}
	for i := range 6 {
		id := fmt.Sprint("c", i)
		want[id] = mustAlloc(t, a, id, "eth0")
	}
	if err := a.Release("c2", "eth0"); err != nil {
		t.Fatal(err)
	}
	delete(want, "c2")
	if now, _ := os.ReadFile(cfg.StateFile); !bytes.Equal(now, file) {
		t.Errorf("state file rewritten by allocations alone")
	}
	jpath := journalPath(cfg.StateFile)
	if jpath != strings.TrimSuffix(cfg.StateFile, ".json")+".journal" {
		t.Errorf("journal path %s", jpath)
	}
	j, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(j), "\n"); lines != 8 {
		t.Errorf("journal has %d lines, want a header and 7 records:\n%s", lines, j)
	}
	if fi, err := os.Stat(jpath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("journal mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}

	// SIGKILL: no Close.
	b := mustNew(t, cfg, nil)
	if got := allocMap(b); !maps.Equal(got, want) {
		t.Fatalf("after restart %v, want %v", got, want)
	}
	// New folded the journal into the state file and started a new one.
	if j, _ := os.ReadFile(jpath); strings.Count(string(j), "\n") != 1 {
		t.Errorf("journal after a restart:\n%s", j)
	}
	want["c6"] = mustAlloc(t, b, "c6", "eth0")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(jpath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal left after Close: %v", err)
	}
	var f fileState
	raw, _ := os.ReadFile(cfg.StateFile)
	if err := json.Unmarshal(raw, &f); err != nil || f.Format != fileFormat || f.Journal != 0 || len(f.Allocations) != len(want) {
		t.Fatalf("state file after Close: format %d, journal %d, %d allocations, %v", f.Format, f.Journal, len(f.Allocations), err)
	}
	c := mustNew(t, cfg, nil)
	defer c.Close()
	if got := allocMap(c); !maps.Equal(got, want) {
		t.Fatalf("after Close and New %v, want %v", got, want)
	}
}

func allocMap(a *Allocator) map[string]netip.Addr {
	m := map[string]netip.Addr{}
	for _, al := range a.List() {
		m[al.ContainerID] = al.Addr
	}
	return m
}

// TestJournalFolds: once the journal is larger than the state file (or
// minJournalBytes), the next change rewrites the state file and starts a
// new journal, so neither grows without bound.
func TestJournalFolds(t *testing.T) {
	defer func(old int) { minJournalBytes = old }(minJournalBytes)
	minJournalBytes = 0
	cfg := testConfig(t, "a", "10.0.0.0/22")
	a := mustNew(t, cfg, nil)
	var largest int
	for i := range 300 {
		mustAlloc(t, a, fmt.Sprint("c", i), "eth0")
		if i >= 20 {
			if err := a.Release(fmt.Sprint("c", i-20), "eth0"); err != nil {
				t.Fatal(err)
			}
		}
		fi, err := os.Stat(journalPath(cfg.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		largest = max(largest, int(fi.Size()))
	}
	sf, _ := os.Stat(cfg.StateFile)
	if limit := int(sf.Size()) + 200; largest > limit {
		t.Fatalf("journal grew to %d bytes, state file %d", largest, sf.Size())
	}
	b := mustNew(t, cfg, nil)
	defer b.Close()
	if got := len(b.List()); got != 20 {
		t.Fatalf("%d allocations after restart, want 20", got)
	}
}

// crashStore is a memStore that crashes at its crashAt-th write or append:
// that write does not happen (the state file write is atomic), that append
// keeps its first tear bytes, and every later operation fails, as nothing
// runs after a crash.
type crashStore struct {
	memStore
	ops, crashAt, tear int
	crashed            bool
}

var errCrash = errors.New("crashed")

func (c *crashStore) crash() bool {
	if c.crashed {
		return true
	}
	c.ops++
	c.crashed = c.ops == c.crashAt
	return c.crashed
}

func (c *crashStore) write(path string, data []byte) error {
	if c.crash() {
		return errCrash
	}
	return c.memStore.write(path, data)
}

func (c *crashStore) appendFile(path string, data []byte) error {
	if c.crashed {
		return errCrash
	}
	if c.crash() {
		_ = c.memStore.appendFile(path, data[:min(c.tear, len(data))])
		return errCrash
	}
	return c.memStore.appendFile(path, data)
}

func (c *crashStore) remove(path string) error {
	if c.crash() {
		return errCrash
	}
	return c.memStore.remove(path)
}

// TestJournalCrashAtEveryStep crashes a node at every write and append its
// persistence makes (and, for appends, with every kind of torn record)
// through a run of allocations, releases, a garbage collection, folds of
// the journal and a clean Close, and restarts it from what the store holds.
// Every allocation acknowledged before the crash is there after the
// restart with its address, every acknowledged release is gone, and the
// node then hands out no address twice.
func TestJournalCrashAtEveryStep(t *testing.T) {
	defer func(old int) { minJournalBytes = old }(minJournalBytes)
	minJournalBytes = 0 // fold often: the folds' own crash points count
	cfg := testConfig(t, "a", "10.0.0.0/26")
	cfg.StateFile = "/sim/a.json"

	type step struct {
		op   string // "add", "del", "gc", "close"
		id   string
		keep []string
	}
	var steps []step
	for i := range 12 {
		steps = append(steps, step{op: "add", id: fmt.Sprint("c", i)})
		if i%3 == 2 {
			steps = append(steps, step{op: "del", id: fmt.Sprint("c", i-1)})
		}
	}
	steps = append(steps, step{op: "gc", keep: []string{"c0", "c3", "c9", "c11"}}, step{op: "add", id: "c12"}, step{op: "del", id: "c0"}, step{op: "close"})

	tears := []int{0, 1, 9, 40, 1 << 20} // 1<<20: the whole record, then the crash
	crashes, full := 0, false
	for crashAt := 1; !full; crashAt++ {
		for _, tear := range tears {
			st := &crashStore{memStore: memStore{files: map[string][]byte{}}, crashAt: crashAt, tear: tear}
			a, err := newAllocator(cfg, nopTransport{}, st)
			if err != nil {
				if !st.crashed {
					t.Fatal(err)
				}
			}
			live := map[string]netip.Addr{}  // acknowledged
			maybe := map[string]netip.Addr{} // released in flight at the crash
			pending := ""                    // allocated in flight at the crash
			for _, s := range steps {
				if a == nil || st.crashed {
					break
				}
				switch s.op {
				case "add":
					addr, err := a.Allocate(context.Background(), s.id, "eth0")
					if err != nil {
						if st.crashed {
							pending = s.id
							break
						}
						t.Fatalf("crash %d/%d: Allocate %s: %v", crashAt, tear, s.id, err)
					}
					live[s.id] = addr
				case "del":
					if err := a.Release(s.id, "eth0"); err != nil {
						if st.crashed {
							maybe[s.id] = live[s.id]
							delete(live, s.id)
							break
						}
						t.Fatal(err)
					}
					delete(live, s.id)
				case "gc":
					keep := make([]Key, len(s.keep))
					for i, id := range s.keep {
						keep[i] = Key{id, "eth0"}
					}
					if _, err := a.ReleaseAllExcept(keep); err != nil {
						if st.crashed {
							for id, addr := range live {
								if !slices.Contains(s.keep, id) {
									maybe[id] = addr
									delete(live, id)
								}
							}
							break
						}
						t.Fatal(err)
					}
					for id := range live {
						if !slices.Contains(s.keep, id) {
							delete(live, id)
						}
					}
				case "close":
					_ = a.Close()
				}
			}
			if !st.crashed {
				full = true
				break
			}
			crashes++
			// Restart from what the crash left.
			st.crashed, st.crashAt = false, 0
			b, err := newAllocator(cfg, nopTransport{}, &st.memStore)
			if err != nil {
				t.Fatalf("crash at op %d (tear %d): restart: %v", crashAt, tear, err)
			}
			got := allocMap(b)
			for id, addr := range live {
				if got[id] != addr {
					t.Fatalf("crash at op %d (tear %d): acknowledged %s=%v, after restart %v", crashAt, tear, id, addr, got[id])
				}
			}
			for id, addr := range got {
				if want, ok := live[id]; ok && want == addr {
					continue
				}
				if want, ok := maybe[id]; ok && want == addr {
					continue
				}
				if id == pending {
					// Recorded whole just before the crash: there,
					// unacknowledged (CNI DEL frees it).
					continue
				}
				t.Fatalf("crash at op %d (tear %d): %s=%v after restart; acknowledged %v", crashAt, tear, id, addr, live)
			}
			used := map[netip.Addr]string{}
			for id, addr := range got {
				if other, dup := used[addr]; dup {
					t.Fatalf("crash at op %d (tear %d): %v held by %s and %s", crashAt, tear, addr, id, other)
				}
				used[addr] = id
			}
			if gw, ok := b.OverlayIP(); ok && used[gw] != "" {
				t.Fatalf("crash at op %d (tear %d): gateway %v held by %s", crashAt, tear, gw, used[gw])
			}
			for i := range 8 {
				id := fmt.Sprint("after-", i)
				addr := mustAlloc(t, b, id, "eth0")
				if other, dup := used[addr]; dup {
					t.Fatalf("crash at op %d (tear %d): %v handed to %s, held by %s", crashAt, tear, addr, id, other)
				}
				used[addr] = id
			}
			b.Close()
		}
		if crashAt > 500 {
			t.Fatal("the run never finished without a crash")
		}
	}
	if crashes < 40 {
		t.Fatalf("only %d crash points", crashes)
	}
	t.Logf("%d crashes", crashes)
}

// TestJournalNotWhenDirty: an allocation that comes with another change
// not yet in the state file (here the version floor, moved when the clock
// passed it) rewrites the state file: a record holds the allocation only.
func TestJournalNotWhenDirty(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	clock := newClock()
	cfg.Now = clock.Now
	a := mustNew(t, cfg, nil)
	defer a.Close()
	mustAlloc(t, a, "c0", "eth0")
	clock.Advance(2 * versionStep * time.Millisecond)
	mustAlloc(t, a, "c1", "eth0")
	a.mu.Lock()
	published := a.st.peers["a"].Version
	a.mu.Unlock()
	var f fileState
	raw, _ := os.ReadFile(cfg.StateFile)
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if f.VersionFloor <= published {
		t.Fatalf("state file's version floor %d, published %d: the moved floor went unrecorded", f.VersionFloor, published)
	}
	if len(f.Allocations) != 2 {
		t.Fatalf("state file holds %d allocations, want both", len(f.Allocations))
	}
}

// TestJournalDamaged: a damaged record before the last is refused with an
// error naming both files; a torn last record is dropped; a journal of
// another generation, or one that releases what was never allocated, or
// hands out the gateway, is not replayed into a wrong state.
func TestJournalDamaged(t *testing.T) {
	setup := func(t *testing.T) (Config, []byte) {
		cfg := testConfig(t, "a", "10.0.0.0/24")
		a := mustNew(t, cfg, nil)
		for i := range 3 {
			mustAlloc(t, a, fmt.Sprint("c", i), "eth0")
		}
		j, err := os.ReadFile(journalPath(cfg.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		return cfg, j // no Close: the journal stays
	}
	line := func(t *testing.T, rec journalRecord) string {
		var b bytes.Buffer
		if err := appendLine(&b, rec); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	tests := []struct {
		name   string
		edit   func(t *testing.T, j string) string
		ok     bool
		allocs int
	}{
		{"intact", func(t *testing.T, j string) string { return j }, true, 3},
		{"torn last record", func(t *testing.T, j string) string { return j[:len(j)-7] }, true, 2},
		{"last record without newline", func(t *testing.T, j string) string { return j[:len(j)-1] }, true, 2},
		{"zeros after the last record", func(t *testing.T, j string) string { return j + "\x00\x00\x00\x00" }, true, 3},
		{"damaged middle record", func(t *testing.T, j string) string {
			i := strings.Index(j, `"c1"`)
			return j[:i] + `"cX"` + j[i+4:]
		}, false, 0},
		{"other generation", func(t *testing.T, j string) string {
			rest := j[strings.Index(j, "\n")+1:]
			return line(t, journalRecord{Journal: journalFormat, Gen: 12345}) + rest
		}, true, 0},
		{"release of what is not held", func(t *testing.T, j string) string {
			return j + line(t, journalRecord{Op: journalDel, Allocation: Allocation{ContainerID: "nope", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.77")}}) + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "z", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.78")}})
		}, false, 0},
		{"an address twice", func(t *testing.T, j string) string {
			return j + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "dup", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.2")}}) + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "z", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.78")}})
		}, false, 0},
		{"the gateway to a pod", func(t *testing.T, j string) string {
			return j + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "gw", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.1")}}) + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "z", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.78")}})
		}, false, 0},
		{"outside the range", func(t *testing.T, j string) string {
			return j + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "far", IfName: "eth0", Addr: netip.MustParseAddr("10.9.0.1")}}) + line(t, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "z", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.78")}})
		}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, j := setup(t)
			jpath := journalPath(cfg.StateFile)
			if err := os.WriteFile(jpath, []byte(tt.edit(t, string(j))), 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := New(cfg, nopTransport{})
			if !tt.ok {
				if err == nil || !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), cfg.StateFile) || !strings.Contains(err.Error(), jpath) {
					t.Fatalf("New = %v; want ErrCorruptState naming %s and %s", err, cfg.StateFile, jpath)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if got := len(a.List()); got != tt.allocs {
				t.Fatalf("%d allocations, want %d", got, tt.allocs)
			}
		})
	}
}

// FuzzJournal: replaying any journal never panics, and what it accepts is
// a valid set of allocations: in range, no key or address twice.
func FuzzJournal(f *testing.F) {
	cfg := testConfig(f, "a", "10.0.0.0/24")
	var b bytes.Buffer
	_ = appendLine(&b, journalRecord{Journal: journalFormat, Gen: 7})
	_ = appendLine(&b, journalRecord{Op: journalAdd, Allocation: Allocation{ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.9")}})
	f.Add(b.Bytes())
	_ = appendLine(&b, journalRecord{Op: journalDel, Allocation: Allocation{ContainerID: "c", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.9")}})
	f.Add(b.Bytes())
	f.Add([]byte("00000000 {}\n"))
	base := []Allocation{{ContainerID: "s", IfName: "eth0", Addr: netip.MustParseAddr("10.0.0.5")}}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, _, err := replayJournal(data, 7, cfg, slices.Clone(base))
		if err != nil {
			if !errors.Is(err, ErrCorruptState) {
				t.Fatalf("error %v is no ErrCorruptState", err)
			}
			return
		}
		keys, addrs := map[Key]bool{}, map[netip.Addr]bool{}
		for _, al := range out {
			k := Key{al.ContainerID, al.IfName}
			if _, in := addrOffset(cfg.Range, al.Addr); !in || al.ContainerID == "" || keys[k] || addrs[al.Addr] {
				t.Fatalf("replay accepted %+v in %v", al, out)
			}
			keys[k], addrs[al.Addr] = true, true
		}
	})
}
