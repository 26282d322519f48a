package daemon

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestNATPortMessages(t *testing.T) {
	var nonce [natPortNonceLen]byte
	copy(nonce[:], "0123456789abcdef")
	for _, m := range []natPortMsg{
		{kind: natPortQuery, nonce: nonce},
		{kind: natPortAnswer, nonce: nonce, seen: netip.MustParseAddrPort("198.51.100.7:40784")},
		{kind: natPortAnswer, nonce: nonce, seen: netip.MustParseAddrPort("[2001:db8::7]:6784")},
	} {
		got, err := decodeNATPortMsg(m.encode())
		if err != nil || got != m {
			t.Fatalf("round trip of %+v: %+v, %v", m, got, err)
		}
	}
	// Hostile input: a clear error, never a panic.
	answer := natPortMsg{kind: natPortAnswer, nonce: nonce, seen: netip.MustParseAddrPort("198.51.100.7:40784")}.encode()
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"kind alone", []byte{natPortQuery}},
		{"short nonce", append([]byte{natPortQuery}, nonce[:8]...)},
		{"query with trailing bytes", append(natPortMsg{kind: natPortQuery, nonce: nonce}.encode(), 0)},
		{"unknown kind", append([]byte{9}, nonce[:]...)},
		{"answer without endpoint", append([]byte{natPortAnswer}, nonce[:]...)},
		{"answer cut short", bytes.Clone(answer[:len(answer)-1])},
		{"answer with trailing bytes", append(bytes.Clone(answer), '9')},
		{"answer of no endpoint", append(append([]byte{natPortAnswer}, nonce[:]...), append([]byte{5}, "hello"...)...)},
		{"answer of port 0", append(append([]byte{natPortAnswer}, nonce[:]...), append([]byte{14}, "198.51.100.7:0"...)...)},
		{"answer of a zoned address", append(append([]byte{natPortAnswer}, nonce[:]...), append([]byte{18}, "[fe80::1%eth0]:999"...)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := decodeNATPortMsg(tc.msg)
			if !errors.Is(err, errNATPortMessage) {
				t.Fatalf("decode = %+v, %v; want %v", m, err, errNATPortMessage)
			}
		})
	}
}

func TestDecideNATPort(t *testing.T) {
	pub := netip.MustParseAddr("198.51.100.7")
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	for _, tc := range []struct {
		name    string
		seen    []netip.AddrPort
		asked   int
		verdict natPortVerdict
		port    uint16
	}{
		{"nobody asked", nil, 0, natPortUnknown, 0},
		{"no answer", nil, 3, natPortUnknown, 0},
		{"one answer of three asked", []netip.AddrPort{ap("198.51.100.7:40784")}, 3, natPortUnknown, 0},
		{"the only peer asked", []netip.AddrPort{ap("198.51.100.7:40784")}, 1, natPortFound, 40784},
		{"two agree", []netip.AddrPort{ap("198.51.100.7:40784"), ap("198.51.100.7:40784")}, 3, natPortFound, 40784},
		{"the port kept", []netip.AddrPort{ap("198.51.100.7:6784"), ap("198.51.100.7:6784")}, 2, natPortFound, 6784},
		{"two differ: a symmetric NAT", []netip.AddrPort{ap("198.51.100.7:40784"), ap("198.51.100.7:40785")}, 2, natPortVaries, 0},
		{"another address does not count", []netip.AddrPort{ap("10.9.0.11:6784"), ap("198.51.100.7:40784")}, 2, natPortUnknown, 0},
		{"an IPv4-mapped answer counts", []netip.AddrPort{ap("[::ffff:198.51.100.7]:40784"), ap("198.51.100.7:40784")}, 2, natPortFound, 40784},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verdict, port := decideNATPort(tc.seen, pub, tc.asked)
			if verdict != tc.verdict || port != tc.port {
				t.Fatalf("decideNATPort = %d, %d; want %d, %d", verdict, port, tc.verdict, tc.port)
			}
		})
	}
}

// Only the peer asked answers a question, once; anything else (another
// sender, a replay, a nonce never sent) is dropped.
func TestNATPortAnswersOnlyFromTheAsked(t *testing.T) {
	n := newNATPorts()
	var nonce, other [natPortNonceLen]byte
	nonce[0], other[0] = 1, 2
	n.pending[nonce] = "host1"
	seen := netip.MustParseAddrPort("198.51.100.7:40784")
	n.record("host2", natPortMsg{kind: natPortAnswer, nonce: nonce, seen: seen})
	n.record("host1", natPortMsg{kind: natPortAnswer, nonce: other, seen: seen})
	if len(n.seen) != 0 {
		t.Fatalf("answers from the wrong peer or nonce kept: %v", n.seen)
	}
	n.record("host1", natPortMsg{kind: natPortAnswer, nonce: nonce, seen: seen})
	n.record("host1", natPortMsg{kind: natPortAnswer, nonce: nonce, seen: netip.MustParseAddrPort("198.51.100.7:1")})
	if len(n.seen) != 1 || n.seen[0] != seen {
		t.Fatalf("answers kept: %v, want the first answer of host1 alone", n.seen)
	}
}

// A flood of questions gets at most natPortAnswersPerSecond answers a
// second (each reads the data plane's peers).
func TestNATPortAnswerLimit(t *testing.T) {
	n := newNATPorts()
	now := time.Now()
	got := 0
	for range 1000 {
		if n.allowAnswer(now) {
			got++
		}
	}
	if got != natPortAnswersPerSecond {
		t.Fatalf("%d answers allowed at once, want %d", got, natPortAnswersPerSecond)
	}
	got = 0
	for i := range 1000 {
		if n.allowAnswer(now.Add(time.Duration(i) * time.Millisecond)) {
			got++
		}
	}
	if got < natPortAnswersPerSecond-1 || got > natPortAnswersPerSecond+1 {
		t.Fatalf("%d answers allowed in the next second, want about %d", got, natPortAnswersPerSecond)
	}
}
