package crypto

import (
	"encoding/hex"
	"testing"
)

// The vectors were computed independently of this package (a plain
// HMAC-SHA256 HKDF over the documented salt and context strings); a change
// here means every existing mesh would split.
func TestGossipKeyVector(t *testing.T) {
	k, err := GossipKey([]byte("correct horse battery staple"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "5706802075bceb17ded414294325847159fdcda7fcb96942b685b29a9016b9b8"
	if got := hex.EncodeToString(k); got != want {
		t.Fatalf("GossipKey = %s, want %s", got, want)
	}
	other, _ := GossipKey([]byte("correct horse battery stapler"))
	if hex.EncodeToString(other) == want {
		t.Fatal("different passwords gave the same key")
	}
	if _, err := GossipKey(nil); err == nil {
		t.Fatal("empty password accepted")
	}
}

func TestPresharedKeyVectorAndSymmetry(t *testing.T) {
	var a, b Key
	for i := range a {
		a[i], b[i] = byte(i), byte(0xff-i)
	}
	pw := []byte("correct horse battery staple")
	ab, err := PresharedKey(pw, a, b)
	if err != nil {
		t.Fatal(err)
	}
	ba, _ := PresharedKey(pw, b, a)
	if ab != ba {
		t.Fatal("preshared key depends on the order of the peers")
	}
	if got, want := ab.String(), "ainzU6msnjwSxCoC4q+vlE7n1u97rj4exKLH3L1AXfc="; got != want {
		t.Fatalf("PresharedKey = %s, want %s", got, want)
	}
	var c Key
	c[0] = 1
	if ac, _ := PresharedKey(pw, a, c); ac == ab {
		t.Fatal("different pairs share a preshared key")
	}
}

func TestParseKey(t *testing.T) {
	for _, bad := range []string{"", "!!!", "AAAA"} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
	var k Key
	k[5] = 9
	got, err := ParseKey(k.String() + "\n")
	if err != nil || got != k {
		t.Fatalf("round trip: %v, %v", got, err)
	}
}
