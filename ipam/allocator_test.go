package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAllocateIdempotent(t *testing.T) {
	a := mustNew(t, testConfig(t, "a", "10.0.0.0/24"), nil)
	x := mustAlloc(t, a, "c1", "eth0")
	if y := mustAlloc(t, a, "c1", "eth0"); y != x {
		t.Fatalf("same key got %v then %v", x, y)
	}
	if z := mustAlloc(t, a, "c1", "eth1"); z == x {
		t.Fatalf("another interface got the same address %v", z)
	}
	if got := len(a.List()); got != 2 {
		t.Fatalf("List has %d allocations, want 2", got)
	}
}

func TestOverlayNeverAllocated(t *testing.T) {
	for _, prefix := range []string{"10.0.0.0/30", "10.0.0.0/29", "10.0.0.0/24"} {
		t.Run(prefix, func(t *testing.T) {
			a := mustNew(t, testConfig(t, "a", prefix), nil)
			ov, ok := a.OverlayIP()
			if !ok || ov != netip.MustParseAddr("10.0.0.1") {
				t.Fatalf("OverlayIP = %v, %v; want 10.0.0.1", ov, ok)
			}
			seen := map[netip.Addr]bool{}
			for i := 0; ; i++ {
				addr, err := a.Allocate(context.Background(), fmt.Sprint("c", i), "eth0")
				if errors.Is(err, ErrNoSpace) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if addr == ov || seen[addr] {
					t.Fatalf("allocated %v twice or the overlay address", addr)
				}
				last := netip.MustParsePrefix(prefix)
				if addr == last.Addr() {
					t.Fatalf("allocated the network address %v", addr)
				}
				seen[addr] = true
			}
			size := 1 << (32 - netip.MustParsePrefix(prefix).Bits())
			if want := size - 3; len(seen) != want {
				t.Fatalf("allocated %d addresses, want %d (size - network - broadcast - overlay)", len(seen), want)
			}
		})
	}
}

func TestReleaseAndReuse(t *testing.T) {
	a := mustNew(t, testConfig(t, "a", "10.0.0.0/30"), nil)
	x := mustAlloc(t, a, "c1", "eth0")
	if _, err := a.Allocate(context.Background(), "c2", "eth0"); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("full range: got %v, want ErrNoSpace", err)
	}
	if err := a.Release("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release("c1", "eth0"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if y := mustAlloc(t, a, "c2", "eth0"); y != x {
		t.Fatalf("got %v, want the released %v", y, x)
	}
}

func TestReleaseAllExcept(t *testing.T) {
	a := mustNew(t, testConfig(t, "a", "10.0.0.0/24"), nil)
	for i := range 5 {
		mustAlloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	n, err := a.ReleaseAllExcept([]Key{{"c1", "eth0"}, {"c3", "eth0"}, {"gone", "eth0"}})
	if err != nil || n != 3 {
		t.Fatalf("ReleaseAllExcept = %d, %v; want 3, nil", n, err)
	}
	var ids []string
	for _, al := range a.List() {
		ids = append(ids, al.ContainerID)
	}
	if got := strings.Join(ids, ","); got != "c1,c3" {
		t.Fatalf("left %s, want c1,c3", got)
	}
}

// failingStore is a state store whose writes and appends fail while fail
// is set.
type failingStore struct {
	diskStore
	fail bool
}

func (s *failingStore) write(path string, data []byte) error {
	if s.fail {
		return errors.New("disk full")
	}
	return s.diskStore.write(path, data)
}

func (s *failingStore) appendFile(path string, data []byte) error {
	if s.fail {
		return errors.New("disk full")
	}
	return s.diskStore.appendFile(path, data)
}

// TestFailedSaveKeepsIndexes: an allocation, a release and a garbage
// collection whose state file cannot be written change nothing, and the
// allocation indexes (the sorted offsets behind List and Held) stay in
// step through each rollback; the file and a restart agree with List.
func TestFailedSaveKeepsIndexes(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	store := &failingStore{}
	a, err := newAllocator(cfg, nopTransport{}, store)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		mustAlloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	check := func(step string, want []string) {
		t.Helper()
		if m := a.indexMismatch(); m != "" {
			t.Fatalf("%s: %s", step, m)
		}
		var ids []string
		var prev netip.Addr
		for _, al := range a.List() {
			if prev.IsValid() && !prev.Less(al.Addr) {
				t.Fatalf("%s: List not sorted by address: %v after %v", step, al.Addr, prev)
			}
			prev = al.Addr
			ids = append(ids, al.ContainerID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, want) {
			t.Fatalf("%s: allocations %v, want %v", step, ids, want)
		}
		a.mu.Lock()
		me := a.st.peers[a.cfg.Self]
		held := slices.Clone(me.Held)
		a.mu.Unlock()
		for _, al := range a.List() {
			off, _ := addrOffset(a.cfg.Range, al.Addr)
			if !slices.Contains(held, off) {
				t.Fatalf("%s: %v allocated but not in Held %v", step, al.Addr, held)
			}
		}
	}
	all := []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"}
	check("start", all)

	store.fail = true
	if _, err := a.Allocate(context.Background(), "c8", "eth0"); err == nil {
		t.Fatal("Allocate succeeded with an unwritable state file")
	}
	check("failed Allocate", all)
	if err := a.Release("c3", "eth0"); err == nil {
		t.Fatal("Release succeeded with an unwritable state file")
	}
	check("failed Release", all)
	if _, err := a.ReleaseAllExcept([]Key{{"c1", "eth0"}}); err == nil {
		t.Fatal("ReleaseAllExcept succeeded with an unwritable state file")
	}
	check("failed ReleaseAllExcept", all)

	store.fail = false
	if err := a.Release("c3", "eth0"); err != nil {
		t.Fatal(err)
	}
	if n, err := a.ReleaseAllExcept([]Key{{"c1", "eth0"}, {"c6", "eth0"}, {"c7", "eth0"}}); err != nil || n != 4 {
		t.Fatalf("ReleaseAllExcept = %d, %v; want 4, nil", n, err)
	}
	mustAlloc(t, a, "c9", "eth0")
	left := []string{"c1", "c6", "c7", "c9"}
	check("after the disk came back", left)

	b := mustNew(t, cfg, nil)
	if m := b.indexMismatch(); m != "" {
		t.Fatalf("restarted: %s", m)
	}
	if got, want := b.List(), a.List(); !slices.Equal(got, want) {
		t.Fatalf("restarted: %v, want %v", got, want)
	}
}

func TestPersistenceRoundTrip(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	a := mustNew(t, cfg, nil)
	want := map[string]netip.Addr{}
	for i := range 10 {
		want[fmt.Sprint("c", i)] = mustAlloc(t, a, fmt.Sprint("c", i), "eth0")
	}
	if err := a.Release("c4", "eth0"); err != nil {
		t.Fatal(err)
	}
	delete(want, "c4")
	ranges := a.Ranges()
	// No Close: a SIGKILL does not close either.
	b := mustNew(t, cfg, nil)
	for id, addr := range want {
		if got := mustAlloc(t, b, id, "eth0"); got != addr {
			t.Errorf("%s: after restart %v, before %v", id, got, addr)
		}
	}
	if fmt.Sprint(b.Ranges()) != fmt.Sprint(ranges) {
		t.Errorf("ring changed across restart: %v vs %v", b.Ranges(), ranges)
	}
}

func TestCorruptStateFile(t *testing.T) {
	tests := []struct {
		name, content string
	}{
		{"not json", "{{{"},
		{"bad ring", `{"format":1,"range":"10.0.0.0/24","self":"a","state":"AAAA"}`},
		{"wrong format", `{"format":99}`},
		{"other range", `{"format":1,"range":"10.1.0.0/24","self":"a"}`},
		{"duplicate allocation", ""}, // filled below
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, "a", "10.0.0.0/24")
			content := tt.content
			if content == "" {
				a := mustNew(t, cfg, nil)
				mustAlloc(t, a, "c1", "eth0")
				a.Close() // the allocation in the file, not the journal
				data, _ := os.ReadFile(cfg.StateFile)
				var f map[string]any
				_ = json.Unmarshal(data, &f)
				al := f["allocations"].([]any)
				f["allocations"] = append(al, al[0])
				b, _ := json.Marshal(f)
				content = string(b)
			}
			if err := os.WriteFile(cfg.StateFile, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := New(cfg, nopTransport{})
			if err == nil || !strings.Contains(err.Error(), cfg.StateFile) {
				t.Fatalf("New = %v; want an error naming %s", err, cfg.StateFile)
			}
		})
	}
}

func TestRemovePeer(t *testing.T) {
	net := newSimNet(1)
	a := net.add(t, "a", "10.0.0.0/24", 2, 0)
	b := net.add(t, "b", "10.0.0.0/24", 2, 0)
	net.settle(t, 30)
	if a.Status().Status != "ready" {
		t.Fatalf("not seeded: %+v", a.Status())
	}
	mustAlloc(t, b.Allocator, "cb", "eth0")
	net.settle(t, 5)
	net.kill("b")
	n, err := a.RemovePeer("b")
	if err != nil || n == 0 {
		t.Fatalf("RemovePeer = %d, %v", n, err)
	}
	for _, r := range a.Ranges() {
		if r.Owner != "a" {
			t.Fatalf("after rmpeer %v is owned by %q", r.CIDR, r.Owner)
		}
	}
	if _, err := a.RemovePeer("a"); err == nil {
		t.Fatal("removing self succeeded")
	}
	if _, err := a.RemovePeer("nobody"); err == nil {
		t.Fatal("removing an unknown peer succeeded")
	}
	// b's reservation was dropped with it: all of b's space is usable.
	if st := a.Status(); st.Free != 256-3 {
		t.Fatalf("free = %d, want %d", st.Free, 256-3)
	}
}

func TestRemovePeerAuthoritativeConcurrent(t *testing.T) {
	net := newSimNet(2)
	names := []string{"a", "b", "c", "d"}
	for _, n := range names {
		net.add(t, n, "10.0.0.0/24", 4, 0)
	}
	net.settle(t, 40)
	net.kill("c")
	// a, b and d all learn at once that c is gone.
	for _, n := range []string{"a", "b", "d"} {
		if _, err := net.nodes[n].RemovePeerAuthoritative("c"); err != nil {
			t.Fatal(err)
		}
	}
	net.settle(t, 20)
	want := fmt.Sprint(net.nodes["a"].Ranges())
	for _, n := range []string{"b", "d"} {
		if got := fmt.Sprint(net.nodes[n].Ranges()); got != want {
			t.Fatalf("%s sees %s, a sees %s", n, got, want)
		}
	}
	// c's quarter went to its predecessor b, whole.
	for _, r := range net.nodes["a"].Ranges() {
		if r.Owner == "c" || r.Owner == "" {
			t.Fatalf("%v still owned by %q", r.CIDR, r.Owner)
		}
	}
	if got := net.nodes["b"].Status().Peers[1].Owned; got != 128 {
		t.Fatalf("b owns %d addresses, want 128", got)
	}
}

// TestRemovePeerAuthoritativeOnceMerged: a node whose turn to remove a
// deleted Node comes after another node's removal reached it writes and
// sends nothing (so a deletion costs one whole state per member, not one
// per pair: docs/scale.md), and the ring ends as when every node removed
// the peer itself.
func TestRemovePeerAuthoritativeOnceMerged(t *testing.T) {
	net := newSimNet(3)
	for _, n := range []string{"a", "b", "c", "d"} {
		net.add(t, n, "10.0.0.0/24", 4, 0)
	}
	net.settle(t, 40)
	net.kill("c")
	if n, err := net.nodes["a"].RemovePeerAuthoritative("c"); err != nil || n == 0 {
		t.Fatalf("first removal: %d ranges, %v", n, err)
	}
	net.settle(t, 20)
	for _, name := range []string{"b", "d", "a"} {
		queued := len(net.queue)
		if n, err := net.nodes[name].RemovePeerAuthoritative("c"); err != nil || n != 0 {
			t.Fatalf("%s: removal after the first one merged: %d ranges, %v; want 0, nil", name, n, err)
		}
		if len(net.queue) != queued {
			t.Fatalf("%s sent %d messages for a removal it had already merged", name, len(net.queue)-queued)
		}
	}
	want := fmt.Sprint(net.nodes["a"].Ranges())
	for _, n := range []string{"b", "d"} {
		if got := fmt.Sprint(net.nodes[n].Ranges()); got != want {
			t.Fatalf("%s sees %s, a sees %s", n, got, want)
		}
	}
	if got := net.nodes["b"].Status().Peers[1].Owned; got != 128 {
		t.Fatalf("b owns %d addresses, want 128 (c's quarter, as its heir)", got)
	}
}

func TestSpanCIDRs(t *testing.T) {
	base := netip.MustParsePrefix("10.32.0.0/12")
	tests := []struct {
		name       string
		start, end uint64
		want       string
	}{
		{"whole", 0, 1 << 20, "[10.32.0.0/12]"},
		{"one", 5, 6, "[10.32.0.5/32]"},
		{"aligned /24", 256, 512, "[10.32.1.0/24]"},
		{"ragged", 3, 17, "[10.32.0.3/32 10.32.0.4/30 10.32.0.8/29 10.32.0.16/32]"},
		{"half of a third", 349525, 699050, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := spanCIDRs(base, span{tt.start, tt.end})
			if tt.want != "" && fmt.Sprint(got) != tt.want {
				t.Fatalf("got %v, want %s", got, tt.want)
			}
			// Always: contiguous, aligned, covering exactly the span.
			pos := tt.start
			for _, p := range got {
				off, _ := addrOffset(base, p.Addr())
				if off != pos || p.Masked() != p {
					t.Fatalf("%v does not start at offset %d or is unaligned", p, pos)
				}
				pos += 1 << (32 - p.Bits())
			}
			if pos != tt.end {
				t.Fatalf("CIDRs end at %d, want %d", pos, tt.end)
			}
		})
	}
}

func TestStatusJSON(t *testing.T) {
	a := mustNew(t, testConfig(t, "a", "10.32.0.0/12"), nil)
	mustAlloc(t, a, "c1", "eth0")
	b, err := json.Marshal(a.Status())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	_ = json.Unmarshal(b, &got)
	for _, k := range []string{"range", "status", "owned", "allocated", "ranges", "peers", "conflicts", "problems"} {
		if _, ok := got[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, b)
		}
	}
	if got["status"] != "ready" || got["allocated"] != 1.0 || got["range"] != "10.32.0.0/12" {
		t.Errorf("unexpected status %s", b)
	}
	r := got["ranges"].([]any)[0].(map[string]any)
	if r["cidr"] != "10.32.0.0/12" || r["owner"] != "a" {
		t.Errorf("ranges[0] = %v", r)
	}
	if s := a.Status().String(); !strings.Contains(s, "100.0%") {
		t.Errorf("human status lacks the percentage:\n%s", s)
	}
}

func TestWaitingUntilCtx(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	cfg.InitialPeerCount = 3
	a := mustNew(t, cfg, nil)
	if st := a.Status(); st.Status != "waiting" || len(st.Problems) == 0 {
		t.Fatalf("status %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := a.Allocate(ctx, "c", "eth0"); !errors.Is(err, ErrNotReady) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want ErrNotReady wrapping the deadline", err)
	}
}

func TestRangeMismatchReported(t *testing.T) {
	a := mustNew(t, testConfig(t, "a", "10.0.0.0/24"), nil)
	b := mustNew(t, testConfig(t, "b", "10.1.0.0/24"), nil)
	if err := a.MergeRemoteState(b.LocalState()); !errors.Is(err, ErrRangeMismatch) {
		t.Fatalf("got %v, want ErrRangeMismatch", err)
	}
	if p := a.Status().Problems; len(p) != 1 || !strings.Contains(p[0], "10.1.0.0/24") {
		t.Fatalf("problems = %q", p)
	}
}

// TestRemovalKeepsVersionsGrowing: a removal written from a stale view has a
// higher epoch but may have a lower version than the live peer's latest
// heartbeat. The peer's next info must beat the removal, and its versions
// must keep growing (lease echoes and liveness compare versions).
func TestRemovalKeepsVersionsGrowing(t *testing.T) {
	cfg := testConfig(t, "b", "10.0.0.0/24")
	b := mustNew(t, cfg, nil)
	mustAlloc(t, b, "c1", "eth0")
	for range 5 {
		b.Tick() // same fake millisecond: versions go up by one each
	}
	b.mu.Lock()
	before := b.st.peers["b"]
	st := b.st.clone()
	b.mu.Unlock()
	st.peers["b"] = peerInfo{Epoch: before.Epoch + 1, Version: before.Version - 3, ID: before.ID, Removed: true}
	if err := b.MergeRemoteState(encodeState(cfg.Range, "a", st)); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	after := b.st.peers["b"]
	b.mu.Unlock()
	// Held: the pod c1 and b's overlay address.
	if after.Removed || after.Epoch != before.Epoch+1 || after.Version <= before.Version || len(after.Held) != 2 {
		t.Fatalf("after a stale removal b publishes %+v (before %+v)", after, before)
	}
	if p := b.Status().Problems; !strings.Contains(strings.Join(p, "\n"), "removed") {
		t.Fatalf("removal not reported: %q", p)
	}
}

// TestReleaseRemovedHeld: a deleted Node's peer keeps its last Held after
// RemovePeerAuthoritative (its pods may still run); once the daemon has
// the API's word that they are gone, ReleaseRemovedHeld drops them: not
// before the heir owns the space, by any number of nodes at once with the
// same result, and afterwards the heir hands those addresses out again.
func TestReleaseRemovedHeld(t *testing.T) {
	net := newSimNet(4)
	for _, n := range []string{"a", "b", "c", "d"} {
		net.add(t, n, "10.0.0.0/28", 4, 0)
	}
	net.settle(t, 40)
	c := net.nodes["c"]
	var held []netip.Addr
	for i := range 3 {
		held = append(held, mustAlloc(t, c.Allocator, fmt.Sprintf("pod%d", i), "eth0"))
	}
	net.settle(t, 10)
	net.kill("c")

	if _, err := net.nodes["a"].ReleaseRemovedHeld("c"); err == nil || !strings.Contains(err.Error(), "not removed") {
		t.Fatalf("release before the removal: %v, want a refusal naming it", err)
	}
	if _, err := net.nodes["a"].ReleaseRemovedHeld("nobody"); !errors.Is(err, errUnknownPeer) {
		t.Fatalf("release of an unknown peer: %v", err)
	}
	if _, err := net.nodes["a"].ReleaseRemovedHeld("a"); err == nil {
		t.Fatal("releasing this peer's own reservations succeeded")
	}
	if _, err := net.nodes["a"].RemovePeerAuthoritative("c"); err != nil {
		t.Fatal(err)
	}
	// Right after the removal c's space waits for its heir (b, the owner
	// of the address below it), which has not heard of it yet.
	if _, err := net.nodes["a"].ReleaseRemovedHeld("c"); !errors.Is(err, ErrNotYet) {
		t.Fatalf("release before the heir claimed c's space: %v, want ErrNotYet", err)
	}
	net.settle(t, 20)
	for _, n := range []string{"a", "b", "d"} {
		if got := net.nodes[n].RemovedHolding(); !slices.Equal(got, []string{"c"}) {
			t.Fatalf("%s: removed peers holding addresses %v, want [c]", n, got)
		}
	}
	// The heir cannot hand out c's pods' addresses: fill it up.
	heir := ""
	for _, r := range net.nodes["a"].Ranges() {
		if r.CIDR.Contains(held[0]) {
			heir = r.Owner
		}
	}
	if heir == "" || heir == "c" {
		t.Fatalf("%v is owned by %q after the removal", held[0], heir)
	}
	// fill has the heir allocate until it can no more.
	fill := func(tag string) []netip.Addr {
		var out []netip.Addr
		for i := range 16 {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			addr, err := net.nodes[heir].Allocate(ctx, fmt.Sprintf("%s%d", tag, i), "eth0")
			cancel()
			if err != nil {
				break
			}
			out = append(out, addr)
			net.settle(t, 1)
		}
		return out
	}
	got := fill("fill")
	for _, h := range held {
		if slices.Contains(got, h) {
			t.Fatalf("%s handed out %v, held by the deleted node's pod", heir, h)
		}
	}
	// Two nodes release at once.
	for _, name := range []string{"a", "d"} {
		// Its pods' addresses and its own (the node's overlay address).
		if n, err := net.nodes[name].ReleaseRemovedHeld("c"); err != nil || n != len(held)+1 {
			t.Fatalf("%s: release: %d, %v; want %d", name, n, err, len(held)+1)
		}
	}
	net.settle(t, 20)
	for _, name := range []string{"a", "b", "d"} {
		if got := net.nodes[name].RemovedHolding(); len(got) != 0 {
			t.Fatalf("%s still sees %v holding addresses", name, got)
		}
		if n, err := net.nodes[name].ReleaseRemovedHeld("c"); err != nil || n != 0 {
			t.Fatalf("%s: release again: %d, %v; want 0, nil", name, n, err)
		}
	}
	// Now the heir hands them out.
	got = append(got, fill("after")...)
	for _, h := range held {
		if !slices.Contains(got, h) {
			t.Fatalf("after the release %s did not hand out %v (got %v)", heir, h, got)
		}
	}
}

// TestHostAllocation: the node's own address (Key.Host) is held like a
// pod's and kept across a restart, never handed to a pod, but left out of
// what describes the pods and never freed by a release or a GC.
func TestHostAllocation(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/29") // 5 usable besides the gateway
	a := mustNew(t, cfg, nil)
	host := Key{HostIDPrefix + "e2e", "e2e"}
	if !host.Host() || (Key{"c1", "eth0"}).Host() {
		t.Fatal("Key.Host does not tell the node's key from a container's")
	}
	h := mustAlloc(t, a, host.ContainerID, host.IfName)
	pods := map[netip.Addr]bool{}
	for i := 0; ; i++ {
		addr, err := a.Allocate(context.Background(), fmt.Sprint("c", i), "eth0")
		if errors.Is(err, ErrNoSpace) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if addr == h {
			t.Fatalf("pod c%d got the node's own address %s", i, h)
		}
		pods[addr] = true
	}
	if len(pods) != 4 {
		t.Fatalf("%d pods allocated, want 4 (5 usable less the node's own)", len(pods))
	}
	if st := a.Status(); st.Allocated != 4 {
		t.Errorf("Status.Allocated = %d, want 4 (the pods only)", st.Allocated)
	}
	for _, al := range a.List() {
		if al.Addr == h {
			t.Errorf("List shows the node's own address: %+v", al)
		}
	}
	if err := a.Release(host.ContainerID, host.IfName); !errors.Is(err, ErrHostKey) {
		t.Errorf("Release of the node's key = %v, want ErrHostKey", err)
	}
	if n, err := a.ReleaseAllExcept(nil); err != nil || n != 4 {
		t.Errorf("ReleaseAllExcept(nil) = %d, %v; want the 4 pods freed", n, err)
	}
	if got := mustAlloc(t, a, host.ContainerID, host.IfName); got != h {
		t.Errorf("after the GC the node's key got %s, want %s kept", got, h)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := mustNew(t, cfg, nil)
	defer b.Close()
	if got := mustAlloc(t, b, host.ContainerID, host.IfName); got != h {
		t.Errorf("after a restart the node's key got %s, want %s", got, h)
	}
	if st := b.Status(); st.Allocated != 0 {
		t.Errorf("after a restart Status.Allocated = %d, want 0", st.Allocated)
	}
}
