package fastdp

import (
	"encoding/binary"
	"testing"
	"time"
)

// An echo request of either family carries the prober's ID, the sequence
// number, the send time and the token; the ICMP checksum is the prober's
// to compute, the ICMPv6 one the kernel's (left zero). An answer is taken
// only as an echo reply of the prober's family with its ID and token and
// a sane round trip.
func TestProbeMessages(t *testing.T) {
	now := time.Unix(1_000_000, 123)
	for _, proto := range []echoProto{echo4, echo6} {
		t.Run(proto.name, func(t *testing.T) {
			p := &Prober{proto: proto, id: 0xbeef, token: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}
			req := p.request(7, now)
			if len(req) != 24 || req[0] != proto.request || req[1] != 0 ||
				binary.BigEndian.Uint16(req[4:]) != 0xbeef || binary.BigEndian.Uint16(req[6:]) != 7 ||
				string(req[16:]) != string(p.token[:]) {
				t.Fatalf("request % x", req)
			}
			if sum := binary.BigEndian.Uint16(req[2:]); proto.checksum != (sum != 0) || (proto.checksum && icmpChecksum(req) != 0) {
				t.Fatalf("request checksum %#04x: want it valid for ICMP and zero (the kernel's) for ICMPv6", sum)
			}
			// What the peer's kernel sends back: the request with the
			// reply's type (and its own checksum).
			reply := func(edit func(m []byte)) []byte {
				m := append([]byte(nil), req...)
				m[0] = proto.reply
				if edit != nil {
					edit(m)
				}
				return m
			}
			other := echo4
			if !proto.is6 {
				other = echo6
			}
			tests := []struct {
				name string
				msg  []byte
				at   time.Time
				ok   bool
			}{
				{name: "reply", msg: reply(nil), at: now.Add(3 * time.Millisecond), ok: true},
				{name: "our own request", msg: req, at: now.Add(time.Millisecond)},
				{name: "other family's reply type", msg: reply(func(m []byte) { m[0] = other.reply }), at: now},
				{name: "nonzero code", msg: reply(func(m []byte) { m[1] = 1 }), at: now},
				{name: "other ID", msg: reply(func(m []byte) { m[4]++ }), at: now},
				{name: "other token", msg: reply(func(m []byte) { m[23]++ }), at: now},
				{name: "truncated", msg: reply(nil)[:23], at: now},
				{name: "from the future", msg: reply(nil), at: now.Add(-time.Millisecond)},
				{name: "too old", msg: reply(nil), at: now.Add(2 * time.Minute)},
			}
			for _, tt := range tests {
				sent, ok := p.sentAt(tt.msg, tt.at)
				if ok != tt.ok || (ok && !sent.Equal(now)) {
					t.Errorf("%s: sentAt = %v, %v; want %v", tt.name, sent, ok, tt.ok)
				}
			}
		})
	}
}
