package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestDigestsAtRest: with automatic reclaim off and every member reading
// digests, a push/pull that is no join carries a digest of the state; at
// rest no whole state travels at all. A change that some peers missed (its
// delta lost) makes their digests differ: the push/pull that finds it sends
// whole states both ways, and every state converges, as with whole-state
// push/pull.
func TestDigestsAtRest(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	net := settledSim(t, 3, "10.0.0.0/20", 0, names...)
	for _, n := range names {
		mustAlloc(t, net.nodes[n].Allocator, "pod-"+n, "eth0")
	}
	// differ lists the peers whose state is not a's.
	differ := func() []string {
		var out []string
		dg := net.nodes["a"].PushPullState(false)
		for _, n := range names {
			if got := net.nodes[n].PushPullState(false); !bytes.Equal(got[len(got)-digestLen:], dg[len(dg)-digestLen:]) {
				out = append(out, n)
			}
		}
		return out
	}
	// converge runs rounds (ticks, messages, push/pulls) until every peer
	// holds a's state: settle waits for equal rings only, and the infos
	// of the new pods may still be on their way.
	converge := func() {
		t.Helper()
		for r := 0; len(differ()) > 0; r++ {
			if r == 100 {
				t.Fatalf("states of %v still differ from a's after %d rounds of push/pull", differ(), r)
			}
			net.round()
		}
	}
	converge()

	// At rest: each push/pull is two digests, and nothing else moves.
	var whole, digests, digestBytes int
	net.onSend = func(from, to string, msg []byte) {
		if len(msg) > 0 && msg[0] == msgState {
			whole++
		}
	}
	net.sent, net.recv = map[string]int{}, map[string]int{}
	for range 20 {
		net.clock.Advance(time.Second)
		for _, n := range names {
			net.nodes[n].Tick()
		}
		for _, x := range names {
			st := net.nodes[x].PushPullState(false)
			if !isDigest(st) {
				t.Fatalf("%s's push/pull at rest is no digest: %q...", x, st[:4])
			}
			digests++
			digestBytes += len(st)
			for _, y := range names {
				if y != x {
					if err := net.nodes[y].MergeRemoteState(st); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		net.deliver(len(net.queue))
	}
	if whole != 0 || len(net.queue) != 0 {
		t.Fatalf("at rest: %d whole states sent, %d messages queued", whole, len(net.queue))
	}
	if per := digestBytes / digests; per > 64 {
		t.Fatalf("a digest is %d bytes", per)
	}
	if full := len(net.nodes["a"].LocalState()); full <= 2*digestBytes/digests {
		t.Fatalf("the whole state (%d bytes) is no larger than a digest", full)
	}

	// A change whose delta is lost: digests differ, whole states repair.
	mustAlloc(t, net.nodes["a"].Allocator, "pod-a2", "eth0")
	net.queue = nil
	if same := bytes.Equal(net.nodes["a"].PushPullState(false), net.nodes["b"].PushPullState(false)); same {
		t.Fatal("a and b have the same digest after a change b missed")
	}
	whole = 0
	converge()
	if whole == 0 {
		t.Fatal("no whole state repaired the lost delta")
	}
}

// TestDigestWhenNot: a join's push/pull, a mesh with a member that reads
// no digests, automatic reclaim on, and a recovering peer all send what
// they sent before digests.
func TestDigestWhenNot(t *testing.T) {
	net := settledSim(t, 4, "10.0.0.0/24", 0, "a", "b", "c")
	a := net.nodes["a"]
	if st := a.PushPullState(true); isDigest(st) {
		t.Fatal("a join's push/pull carries a digest")
	}
	net.noDigests = true
	if st := a.PushPullState(false); isDigest(st) {
		t.Fatal("a digest while a member reads none")
	}
	net.noDigests = false
	net.restart(t, "a")
	a = net.nodes["a"]
	if st := a.PushPullState(false); isDigest(st) || !isRecoveryState(mustDecode(t, st)) {
		t.Fatal("a recovering peer sends more than its own info")
	}

	rnet := settledSim(t, 5, "10.0.0.0/24", time.Minute, "a", "b", "c")
	if st := rnet.nodes["a"].PushPullState(false); isDigest(st) {
		t.Fatal("a digest with automatic reclaim on")
	}
}

func mustDecode(t *testing.T, buf []byte) wireState {
	t.Helper()
	w, err := decodeState(buf)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestDigestHostile: a digest is the sender's word. A malformed one is
// refused and counted; one naming a peer that is neither in the table nor
// a member is ignored; a flood of digests naming one member costs at most
// one whole state to it per tick.
func TestDigestHostile(t *testing.T) {
	net := settledSim(t, 6, "10.0.0.0/24", 0, "a", "b", "c")
	a := net.nodes["a"]
	var sum [digestLen]byte
	for _, tc := range []struct {
		name string
		buf  []byte
	}{
		{"magic only", []byte(stateMagicDigest)},
		{"short digest", encodeDigest("b", sum)[:20]},
		{"trailing bytes", append(encodeDigest("b", sum), 1)},
		{"no sender", encodeDigest("", sum)},
	} {
		if err := a.MergeRemoteState(tc.buf); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: %v, want ErrCorruptState", tc.name, err)
		}
	}
	if n := a.Status().Rejected[RejectCorrupt]; n != 4 {
		t.Fatalf("%d corrupt digests counted, want 4", n)
	}
	sent := map[string]int{}
	net.onSend = func(from, to string, msg []byte) {
		if from == "a" && msg[0] == msgState {
			sent[to]++
		}
	}
	for i := range 50 {
		_ = a.MergeRemoteState(encodeDigest(fmt.Sprint("stranger", i), sum))
		_ = a.MergeRemoteState(encodeDigest("b", sum))
	}
	if sent["b"] != 1 || len(sent) != 1 {
		t.Fatalf("whole states sent for 100 forged digests: %v; want one, to b", sent)
	}
	net.queue = nil
	a.Tick()
	_ = a.MergeRemoteState(encodeDigest("b", sum))
	if sent["b"] != 2 {
		t.Fatalf("after a tick, b got %d states in all, want 2", sent["b"])
	}
}
