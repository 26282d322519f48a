package mesh

import "testing"

func TestMetaUpdateKind(t *testing.T) {
	base := func() Meta {
		return Meta{PeerID: "a", PublicKey: "k", DPPort: 6784, Keys: []string{"x"}, Sig: "s1",
			Paths: &PathMeta{Version: PathMetaVersion, Probe: "10.32.0.1", Down: []string{"b"}, Coord: []int{1, 2, 3}}}
	}
	tests := []struct {
		name   string
		change func(*Meta)
		want   string
	}{
		{"nothing", func(*Meta) {}, ""},
		{"signature alone", func(m *Meta) { m.Sig = "s2" }, ""},
		{"coordinate", func(m *Meta) { m.Paths.Coord = []int{1, 2, 4}; m.Sig = "s2" }, MetaUpdateCoordinate},
		{"down list", func(m *Meta) { m.Paths.Down = nil }, MetaUpdatePaths},
		{"down list and coordinate", func(m *Meta) { m.Paths.Down = []string{"c"}; m.Paths.Coord = nil }, MetaUpdatePaths},
		{"probe address", func(m *Meta) { m.Paths.Probe = "10.32.0.2" }, MetaUpdatePaths},
		{"no relay", func(m *Meta) { m.Paths.NoRelay = true }, MetaUpdatePaths},
		{"paths dropped", func(m *Meta) { m.Paths = nil }, MetaUpdateOther},
		{"wireguard key", func(m *Meta) { m.PublicKey = "k2" }, MetaUpdateOther},
		{"keys and coordinate", func(m *Meta) { m.Keys = []string{"y", "x"}; m.Paths.Coord = nil }, MetaUpdateOther},
		{"nat home", func(m *Meta) { m.Home = "c" }, MetaUpdateOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			was, now := base(), base()
			tt.change(&now)
			if got := metaUpdateKind(was, now); got != tt.want {
				t.Errorf("metaUpdateKind = %q, want %q", got, tt.want)
			}
			// was's own Paths must be left alone: the members keep it.
			if !was.Paths.Equal(*base().Paths) {
				t.Errorf("metaUpdateKind changed its input's paths: %+v", *was.Paths)
			}
		})
	}

	var u metaUpdates
	u.count(base(), base())
	m := base()
	m.Paths.Coord = nil
	u.count(base(), m)
	u.count(base(), m)
	m.Home = "c"
	u.count(base(), m)
	if c, p, o := u.coordinate.Load(), u.paths.Load(), u.other.Load(); c != 2 || p != 0 || o != 1 {
		t.Errorf("counted coordinate %d, paths %d, other %d; want 2, 0, 1", c, p, o)
	}
}
