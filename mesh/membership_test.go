package mesh

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// freePort finds a port free for both TCP and UDP on loopback.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type logBuf struct {
	mu sync.Mutex
	sb strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.String()
}

func startNode(t *testing.T, name string, key []byte, w io.Writer, targets ...string) *Membership {
	t.Helper()
	cfg := testConfig(t, name, key, targets...)
	if w == nil {
		w = io.Discard
	}
	cfg.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return startWith(t, cfg)
}

// testConfig is a node on loopback with fast retries and its files in a
// temporary directory.
func testConfig(t *testing.T, name string, key []byte, targets ...string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name = name
	cfg.Meta = Meta{PeerID: "id-" + name}
	cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.Port = freePort(t)
	cfg.GossipKey = key
	cfg.Targets = targets
	cfg.RetryMin = 100 * time.Millisecond
	cfg.RetryMax = 500 * time.Millisecond
	cfg.RejoinSpread = cfg.RetryMax
	cfg.RememberedFile = t.TempDir() + "/peers.json"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// startWith starts a node of cfg, closed when the test ends.
func startWith(t *testing.T, cfg Config) *Membership {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	m.Start()
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitWithin(t, 15*time.Second, what, cond)
}

// waitWithin polls cond until it holds or d has passed.
func waitWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func states(m *Membership) map[string]string {
	out := map[string]string{}
	for _, mem := range m.Members() {
		out[mem.Name] = string(mem.State)
	}
	return out
}

func TestJoinLeaveAndMeta(t *testing.T) {
	key := make([]byte, 32)
	a := startNode(t, "a", key, nil)
	b := startNode(t, "b", key, nil, a.LocalAddr().String())
	waitFor(t, "a to see b alive", func() bool { return states(a)["b"] == string(api.MemberAlive) })
	for _, mem := range a.Members() {
		if mem.Name == "b" && mem.Meta.PeerID != "id-b" {
			t.Fatalf("meta of b = %+v", mem.Meta)
		}
	}
	waitFor(t, "b's target connected", func() bool {
		ts := b.Targets()
		return len(ts) == 1 && ts[0].State == TargetConnected
	})
	if err := b.Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	b.Close()
	waitFor(t, "a to see b left", func() bool { return states(a)["b"] == string(api.MemberLeft) })
}

func TestWrongPasswordIsRefusedAndReported(t *testing.T) {
	good := make([]byte, 32)
	bad := make([]byte, 32)
	bad[0] = 1
	a := startNode(t, "a", good, nil)
	var logs logBuf
	c := startNode(t, "c", bad, &logs, a.LocalAddr().String())
	waitFor(t, "c's target to fail", func() bool {
		ts := c.Targets()
		return len(ts) == 1 && ts[0].State == TargetFailed
	})
	if !strings.Contains(c.Targets()[0].Error, "wrong mesh password?") {
		t.Fatalf("target error = %q", c.Targets()[0].Error)
	}
	if !strings.Contains(logs.String(), "wrong mesh password?") {
		t.Fatalf("log does not say wrong password:\n%s", logs.String())
	}
	if _, ok := states(a)["c"]; ok {
		t.Fatal("a sees c despite the wrong password")
	}
	if len(c.Members()) != 1 {
		t.Fatalf("c sees %v", states(c))
	}
}

type recorder struct {
	mu     sync.Mutex
	state  []byte
	merged [][]byte
	msgs   []string
}

func (r *recorder) LocalState(bool) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *recorder) MergeRemoteState(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if string(b) == "garbage" {
		return errors.New("bad state")
	}
	r.merged = append(r.merged, append([]byte(nil), b...))
	return nil
}

func (r *recorder) HandleMessage(from string, msg []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, from+":"+string(msg))
	return nil
}

func (r *recorder) has(f func(r *recorder) bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r)
}

func TestChannelsCarryStateAndMessages(t *testing.T) {
	key := make([]byte, 32)
	a := startNode(t, "a", key, nil)
	ra := &recorder{state: []byte("state-of-a")}
	sa, err := a.Register(ChannelIPAM, ra)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Register(ChannelIPAM, ra); err == nil {
		t.Fatal("registering a channel twice succeeded")
	}
	b := startNode(t, "b", key, nil)
	rb := &recorder{state: []byte("state-of-b")}
	sb, err := b.Register(ChannelIPAM, rb)
	if err != nil {
		t.Fatal(err)
	}
	b.Connect(a.LocalAddr().String())
	waitFor(t, "state exchange", func() bool {
		return ra.has(func(r *recorder) bool { return len(r.merged) > 0 && string(r.merged[0]) == "state-of-b" })
	})
	waitFor(t, "b to see a", func() bool { return states(b)["a"] == string(api.MemberAlive) })
	if err := sb.SendTo("a", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	sa.Broadcast([]byte(strings.Repeat("x", 2000))) // too big for UDP: goes over TCP
	sa.Broadcast([]byte("small"))
	waitFor(t, "messages", func() bool {
		return ra.has(func(r *recorder) bool { return len(r.msgs) == 1 && r.msgs[0] == "b:hello" }) &&
			rb.has(func(r *recorder) bool { return len(r.msgs) == 2 })
	})
	if err := sb.SendTo("nobody", nil); err == nil {
		t.Fatal("SendTo an unknown peer succeeded")
	}
}

func TestMalformedRemoteStateIsDropped(t *testing.T) {
	key := make([]byte, 32)
	a := startNode(t, "a", key, nil)
	ra := &recorder{}
	if _, err := a.Register(ChannelIPAM, ra); err != nil {
		t.Fatal(err)
	}
	for _, buf := range [][]byte{{1}, {1, 0, 0, 0, 9, 'x'}, {1, 0, 0, 0, 7, 'g', 'a', 'r', 'b', 'a', 'g', 'e'}, {9, 0, 0, 0, 1, 'x'}} {
		a.delegate.MergeRemoteState(buf, false)
	}
	a.delegate.NotifyMsg([]byte{1})
	a.delegate.NotifyMsg([]byte{1, 200, 'x'})
	if ra.has(func(r *recorder) bool { return len(r.merged) != 0 || len(r.msgs) != 0 }) {
		t.Fatalf("garbage reached the channel: %+v", ra)
	}
}

func TestMetaLimit(t *testing.T) {
	if _, err := (Meta{PeerID: strings.Repeat("x", 600)}).Encode(); err == nil {
		t.Fatal("oversized meta accepted")
	}
	b, err := (Meta{PeerID: "0123456789abcdef0123456789abcdef", Version: "v1.2.3-45-gdeadbeef-dirty", PublicKey: strings.Repeat("A", 44), DPPort: 6784}).Encode()
	if err != nil || len(b) > 200 {
		t.Fatalf("typical meta is %d bytes, %v", len(b), err)
	}
	if _, err := DecodeMeta([]byte("{not json")); err == nil {
		t.Fatal("garbage meta decoded")
	}
}

// A node encrypting with a new key while accepting the old one talks to a
// node that only knows the old one; once the old key is dropped, a node
// with only the old key is kept out.
func TestGossipKeysRotate(t *testing.T) {
	oldKey, newKey := make([]byte, 32), make([]byte, 32)
	newKey[0] = 1
	a := startNode(t, "a", oldKey, nil)
	b := startNode(t, "b", oldKey, nil, a.LocalAddr().String())
	waitFor(t, "a and b to meet", func() bool {
		return states(a)["b"] == string(api.MemberAlive) && states(b)["a"] == string(api.MemberAlive)
	})

	// a accepts the new key but still encrypts with the old; b accepts
	// both and encrypts with the new: each reads the other.
	if err := a.SetGossipKeys(oldKey, [][]byte{newKey}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetGossipKeys(newKey, [][]byte{oldKey}); err != nil {
		t.Fatal(err)
	}
	// b now encrypts with the new key, which a accepts.
	c := startNode(t, "c", newKey, nil, b.LocalAddr().String())
	waitFor(t, "c (new key only) to join through b", func() bool { return states(c)["b"] == string(api.MemberAlive) })
	if err := a.SetGossipKeys(newKey, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.SetGossipKeys(newKey, nil); err != nil {
		t.Fatal(err)
	}
	if got := len(a.keyring.GetKeys()); got != 1 {
		t.Fatalf("a holds %d keys after dropping the old one", got)
	}
	waitFor(t, "everyone alive on the new key", func() bool {
		return states(a)["c"] == string(api.MemberAlive) && states(c)["a"] == string(api.MemberAlive) && states(b)["a"] == string(api.MemberAlive)
	})
	stale := startNode(t, "stale", oldKey, nil, a.LocalAddr().String())
	waitFor(t, "the old-key node to be refused", func() bool {
		ts := stale.Targets()
		return len(ts) == 1 && ts[0].State == TargetFailed
	})
	if _, ok := states(a)["stale"]; ok {
		t.Fatal("a let in a node with only the old key")
	}
	insecure := startNode(t, "plain", nil, nil)
	if err := insecure.SetGossipKeys(newKey, nil); err == nil {
		t.Fatal("SetGossipKeys without encryption succeeded")
	}
}
