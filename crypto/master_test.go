package crypto

import (
	"encoding/hex"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"
)

// The library's Argon2id against the reference implementation's published
// vector (phc-winner-argon2, Argon2id v1.3, t=2, m=64 MiB, p=1). The
// vectors below were computed once with a separate Argon2id implementation
// (OpenSSL's), itself checked against RFC 9106's Argon2id test vector
// (section 5.3, tag 0d640df5...6b01e659), and a plain HMAC-SHA256 HKDF.
func TestArgon2idReferenceVector(t *testing.T) {
	got := hex.EncodeToString(argon2.IDKey([]byte("password"), []byte("somesalt"), 2, 64*1024, 1, 32))
	if want := "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7"; got != want {
		t.Fatalf("argon2.IDKey = %s, want %s", got, want)
	}
}

// pairKeys are the two public keys every preshared-key vector uses.
func pairKeys() (a, b Key) {
	for i := range a {
		a[i], b[i] = byte(i), byte(0xff-i)
	}
	return a, b
}

// The known answers are part of the wire contract: a change here means
// every existing mesh splits.
func TestMasterKeyVectors(t *testing.T) {
	pw := []byte("correct horse battery staple")
	passwordKey := func(name string) func() (*MasterKey, error) {
		return func() (*MasterKey, error) { return PasswordKey(pw, name) }
	}
	var raw Key
	for i := range raw {
		raw[i] = byte(i)
	}
	tests := []struct {
		name            string
		key             func() (*MasterKey, error)
		id, gossip, psk string
		legacy          bool
	}{
		{"password", passwordKey("example-mesh"), "6d53fb95a89a2c6f",
			"98627c0099722162e3296045d7bbe082b95249a3076fb3f680c902933ed8eccf", "JC6M+hs0S7jI7qgFswhN0GvnYSEtk+e6E0y9kBi/Oyw=", false},
		{"same password, other mesh name", passwordKey("other-mesh"), "6a2f2dd0d21ab2d7",
			"90e35948d7f72194db152e5d8432c6a81f8abefd0e006ec971e9d7a3bd1ed610", "00BF7EatHmSkf6D1m8ioQi07dO/LuGqjWYwGxh0lR0Q=", false},
		{"key file", func() (*MasterKey, error) { return KeyFileKey(raw), nil }, "6c0d65d133506d45",
			"6feadcdceb88044764b7983165205619b17fa426010809692e5f8274cc52282e", "fPs38rbfanS5PTquaWKLOWf9W2wZrPoukZezipueRqk=", false},
		// The previous release's derivations, unchanged, so that an upgrade
		// can accept them (same values as TestGossipKeyVector and
		// TestPresharedKeyVectorAndSymmetry).
		{"legacy password", func() (*MasterKey, error) { return LegacyPasswordKey(pw) }, "857933370860a929",
			"5706802075bceb17ded414294325847159fdcda7fcb96942b685b29a9016b9b8", "ainzU6msnjwSxCoC4q+vlE7n1u97rj4exKLH3L1AXfc=", true},
	}
	a, b := pairKeys()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.key()
			if err != nil {
				t.Fatal(err)
			}
			if m.ID() != tc.id {
				t.Errorf("ID = %s, want %s", m.ID(), tc.id)
			}
			if got := hex.EncodeToString(m.GossipKey()); got != tc.gossip {
				t.Errorf("GossipKey = %s, want %s", got, tc.gossip)
			}
			if got := m.PresharedKey(a, b).String(); got != tc.psk {
				t.Errorf("PresharedKey = %s, want %s", got, tc.psk)
			}
			if m.PresharedKey(b, a) != m.PresharedKey(a, b) {
				t.Error("preshared key depends on the order of the peers")
			}
			if m.Legacy() != tc.legacy {
				t.Errorf("Legacy = %v", m.Legacy())
			}
			if s := m.String(); !strings.Contains(s, m.ID()) || strings.Contains(s, tc.gossip) {
				t.Errorf("String() = %q: want the ID and nothing of the key", s)
			}
		})
	}
}

// A key file and a password never give the same key, even when the
// password is the key file's very bytes.
func TestKeyFileAndPasswordAreSeparated(t *testing.T) {
	var raw Key
	copy(raw[:], "0123456789abcdef0123456789abcdef")
	fromFile := KeyFileKey(raw)
	fromPassword, err := PasswordKey(raw[:], "m")
	if err != nil {
		t.Fatal(err)
	}
	if fromFile.ID() == fromPassword.ID() || string(fromFile.GossipKey()) == string(fromPassword.GossipKey()) {
		t.Fatal("a key file and the same bytes as a password give the same key")
	}
}

// The cost parameters are constants of the program: nothing a peer sends
// reaches them. This pins them to at least the documented floor.
func TestArgon2ParametersAreAtLeastTheDocumentedFloor(t *testing.T) {
	if Argon2Memory < 64*1024 || Argon2Time < 3 || Argon2Threads < 1 {
		t.Fatalf("Argon2id parameters t=%d m=%d KiB p=%d are below the documented t=3, 64 MiB", Argon2Time, Argon2Memory, Argon2Threads)
	}
}

func TestPasswordKeyRefusesBadInput(t *testing.T) {
	tests := []struct {
		name, password, mesh, want string
	}{
		{"empty password", "", "m", "empty"},
		{"no mesh name", "a long enough password", "", "--mesh-name"},
		{"control character", "a long enough password", "a\nb", "control character"},
		{"name too long", "a long enough password", strings.Repeat("x", MaxMeshNameLen+1), "more than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PasswordKey([]byte(tc.password), tc.mesh)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestParseKeyFile(t *testing.T) {
	var k1, k2 Key
	k1[0], k2[0] = 1, 2
	tests := []struct {
		name    string
		content string
		want    int
		err     string
	}{
		{"one key", KeyFileLine(k1) + "\n", 1, ""},
		{"rotation: new then old, comments", "# new\n" + KeyFileLine(k2) + "\n\n# old\n" + KeyFileLine(k1) + "\n", 2, ""},
		{"a password given as key file", "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm8=\n", 0, "not a mesh key"},
		{"short key", KeyFilePrefix + "AAAA\n", 0, "line 1"},
		{"empty", "# nothing\n", 0, "no key"},
		{"too many", strings.Repeat(KeyFileLine(k1)+"\n", MaxKeyFileKeys+1), 0, "more than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseKeyFile([]byte(tc.content))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(keys) != tc.want {
				t.Fatalf("got %d keys, %v; want %d", len(keys), err, tc.want)
			}
		})
	}
}

// BenchmarkPasswordKey is one offline guess at a password: what Argon2id
// makes an attacker pay (and the daemon pays once per password).
func BenchmarkPasswordKey(b *testing.B) {
	pw := []byte("a password of the benchmark, long enough")
	for b.Loop() {
		if _, err := PasswordKey(pw, "bench"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(Argon2Memory)/1024, "MiB/op")
}

// BenchmarkLegacyPasswordKey is the previous release's derivation, for
// comparison.
func BenchmarkLegacyPasswordKey(b *testing.B) {
	pw := []byte("a password of the benchmark, long enough")
	for b.Loop() {
		if _, err := LegacyPasswordKey(pw); err != nil {
			b.Fatal(err)
		}
	}
}
