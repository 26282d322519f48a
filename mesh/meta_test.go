package mesh

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// The path report rides in the metadata: it round-trips, old metadata
// without it decodes to no report, a report of a later format or with an
// over-long list is not believed, and a list that does not fit becomes
// Overflow rather than a shortened (lying) list.
func TestPathMeta(t *testing.T) {
	base := Meta{PeerID: strings.Repeat("a", 32), Version: "v1.2.3-45-gdeadbeef-dirty", PublicKey: strings.Repeat("A", 44), DPPort: 6784,
		Keys: []string{"0011223344556677", "8899aabbccddeeff"}}
	names := func(n, size int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("%0*d", size, i))
		}
		return out
	}
	tests := []struct {
		name         string
		wire         string // decoded when set, else base.WithPaths(p) is encoded
		p            PathMeta
		wantPaths    bool
		wantDown     []string
		wantOverflow bool
		wantNoRelay  bool
		wantPref     int
		wantCoord    []int
	}{
		{name: "round trip", p: PathMeta{Probe: "10.32.0.1", Down: []string{"host2"}, NoRelay: true},
			wantPaths: true, wantDown: []string{"host2"}, wantNoRelay: true},
		{name: "preference", p: PathMeta{Preference: -7}, wantPaths: true, wantPref: -7},
		{name: "first release of the format: no preference", wire: `{"id":"x","p":{"v":1,"d":["a"],"n":true}}`,
			wantPaths: true, wantDown: []string{"a"}, wantNoRelay: true},
		{name: "preference beyond the bound", wire: `{"id":"x","p":{"v":1,"f":1000000}}`, wantPaths: true, wantPref: MaxRelayPreference},
		{name: "preference below the bound", wire: `{"id":"x","p":{"v":1,"f":-1000000}}`, wantPaths: true, wantPref: -MaxRelayPreference},
		{name: "nothing down", p: PathMeta{Probe: "10.32.0.1"}, wantPaths: true},
		{name: "previous release", wire: `{"id":"x","wg":"k","dp":6784}`},
		{name: "later format", wire: `{"id":"x","p":{"v":2,"d":["a"]}}`},
		{name: "too many on the wire", wire: `{"id":"x","p":{"v":1,"d":["a","b","c","d","e","f","g","h","i","j","k","l","m"]}}`,
			wantPaths: true, wantOverflow: true},
		{name: "too many to list", p: PathMeta{Down: names(MaxMetaDown+1, 3)}, wantPaths: true, wantOverflow: true},
		{name: "too long to fit", p: PathMeta{Down: names(MaxMetaDown, 40)}, wantPaths: true, wantOverflow: true},
		{name: "long names that fit", p: PathMeta{Down: names(4, 40)}, wantPaths: true, wantDown: names(4, 40)},
		{name: "coordinate", p: PathMeta{Down: names(3, 8), Coord: []int{-100000, 100000, 55555, 100000, 1500}},
			wantPaths: true, wantDown: names(3, 8), wantCoord: []int{-100000, 100000, 55555, 100000, 1500}},
		{name: "coordinate of the wrong length", wire: `{"id":"x","p":{"v":1,"c":[1,2,3]}}`, wantPaths: true},
		{name: "coordinate too long", wire: `{"id":"x","p":{"v":1,"c":[1,2,3,4,5,6]}}`, wantPaths: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte(tt.wire)
			if tt.wire == "" {
				var err error
				if b, err = base.WithPaths(tt.p).Encode(); err != nil {
					t.Fatalf("encode: %v", err)
				}
				if len(b) > MetaLimit {
					t.Fatalf("encoded %d bytes", len(b))
				}
			}
			m, err := DecodeMeta(b)
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if (m.Paths != nil) != tt.wantPaths {
				t.Fatalf("paths = %+v, want present %v", m.Paths, tt.wantPaths)
			}
			if m.Paths == nil {
				return
			}
			if !slices.Equal(m.Paths.Down, tt.wantDown) || m.Paths.Overflow != tt.wantOverflow || m.Paths.NoRelay != tt.wantNoRelay || m.Paths.Preference != tt.wantPref {
				t.Fatalf("paths = %+v, want down %v overflow %v noRelay %v preference %d", m.Paths, tt.wantDown, tt.wantOverflow, tt.wantNoRelay, tt.wantPref)
			}
			if !slices.Equal(m.Paths.Coord, tt.wantCoord) {
				t.Fatalf("coordinate %v, want %v", m.Paths.Coord, tt.wantCoord)
			}
		})
	}
}

// A node short of room gives up its coordinate before any broken path:
// without it latency counts for nobody, while a shortened list would
// claim paths it does not have.
func TestWithPathsDropsCoordinateFirst(t *testing.T) {
	base := Meta{PeerID: strings.Repeat("a", 32), Version: "v1.2.3", PublicKey: strings.Repeat("A", 44), DPPort: 6784,
		Keys: []string{"0011223344556677"}, SignKey: strings.Repeat("B", 44)}
	c := []int{-100000, 100000, -100000, 100000, 1500}
	dropped := false
	for k := 1; k <= MaxMetaDown; k++ {
		var down []string
		for i := range k {
			down = append(down, fmt.Sprintf("%030d", i))
		}
		m := base.WithPaths(PathMeta{Down: down, Coord: c})
		if !m.fits() {
			t.Fatalf("%d names: the metadata does not fit", k)
		}
		switch {
		case m.Paths.Overflow && m.Paths.Coord != nil:
			t.Fatalf("%d names: the list overflowed while the coordinate stayed", k)
		case m.Paths.Coord == nil && !m.Paths.Overflow:
			dropped = true
			if !slices.Equal(m.Paths.Down, down) {
				t.Fatalf("%d names: down %v", k, m.Paths.Down)
			}
		case m.Paths.Coord != nil && dropped:
			t.Fatalf("%d names: the coordinate is back with a longer list", k)
		}
	}
	if !dropped {
		t.Fatal("no list long enough to need the coordinate's room: the test proves nothing")
	}
}
