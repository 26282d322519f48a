package mesh

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

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
	u.count(metaUpdateKind(base(), base()))
	m := base()
	m.Paths.Coord = nil
	u.count(metaUpdateKind(base(), m))
	u.count(metaUpdateKind(base(), m))
	m.Home = "c"
	u.count(metaUpdateKind(base(), m))
	if c, p, o := u.coordinate.Load(), u.paths.Load(), u.other.Load(); c != 2 || p != 0 || o != 1 {
		t.Errorf("counted coordinate %d, paths %d, other %d; want 2, 0, 1", c, p, o)
	}
}

// A member's coordinate alone reaches Members and the counters at once but
// wakes no subscriber; any other change of its metadata wakes them.
func TestCoordinateAloneWakesNoSubscriber(t *testing.T) {
	a := startNode(t, "a", nil, nil)
	b := startNode(t, "b", nil, nil, a.LocalAddr().String())
	waitFor(t, "b alive on a", func() bool { m, ok := a.Member("b"); return ok && m.State == api.MemberAlive })
	ch := a.Subscribe()
	meta := Meta{PeerID: "id-b"}
	publish := func(p PathMeta, what string) {
		t.Helper()
		// Nothing pending from before: the subscription is drained.
		select {
		case <-ch:
		default:
		}
		if err := b.UpdateMeta(meta.WithPaths(p)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, what+" of b on a", func() bool {
			m, _ := a.Member("b")
			return m.Meta.Paths != nil && m.Meta.Paths.Equal(*meta.WithPaths(p).Paths)
		})
	}
	publish(PathMeta{Probe: "10.32.0.2", Coord: []int{1, 2, 3, 1, 1500}}, "a path report")
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("a new path report woke no subscriber")
	}
	before := a.MetaUpdates()
	publish(PathMeta{Probe: "10.32.0.2", Coord: []int{4, 5, 6, 1, 1400}}, "a coordinate")
	select {
	case <-ch:
		t.Fatal("a coordinate alone woke a subscriber")
	case <-time.After(time.Second):
	}
	if got := a.MetaUpdates(); got[MetaUpdateCoordinate] != before[MetaUpdateCoordinate]+1 || got[MetaUpdatePaths] != before[MetaUpdatePaths] {
		t.Errorf("counted %v after a coordinate change, was %v", got, before)
	}
	publish(PathMeta{Probe: "10.32.0.2", Down: []string{"c"}, Coord: []int{4, 5, 6, 1, 1400}}, "a down path")
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("a path seen down woke no subscriber")
	}
	if got := a.MetaUpdates(); got[MetaUpdatePaths] != before[MetaUpdatePaths]+1 {
		t.Errorf("counted %v after a down path, was %v", got, before)
	}
}
