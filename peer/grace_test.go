package peer

import (
	"slices"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// peerNames returns the names of the nodes that got a peer in in's config,
// sorted.
func peerNames(t *testing.T, w *world, in Input) []string {
	t.Helper()
	cfg, err := Desired(in)
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]string{}
	for name, pub := range w.pubs {
		byKey[pub.String()] = name
	}
	var out []string
	for _, p := range cfg.Peers {
		out = append(out, byKey[p.PublicKey.String()])
	}
	slices.Sort(out)
	kept, err := Kept(in)
	if err != nil {
		t.Fatal(err)
	}
	var keptNames []string
	for _, n := range kept {
		keptNames = append(keptNames, n.Name)
	}
	slices.Sort(keptNames)
	if !slices.Equal(out, keptNames) {
		t.Fatalf("Desired gives peers %v but Kept says %v", out, keptNames)
	}
	return out
}

func TestGraceKeepsPeers(t *testing.T) {
	w := newWorld(t, "a", "b", "c", "d")
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		mutate func(in *Input)
		want   []string
	}{
		{"all alive", func(in *Input) {}, []string{"b", "c"}},
		{"suspect keeps its peer", func(in *Input) { in.Nodes[1].State = api.MemberSuspect }, []string{"b", "c"}},
		{"dead within the grace keeps its peer", func(in *Input) {
			in.Nodes[1].State, in.Nodes[1].Since = api.MemberDead, now.Add(-Grace+time.Second)
		}, []string{"b", "c"}},
		{"dead past the grace loses it", func(in *Input) {
			in.Nodes[1].State, in.Nodes[1].Since = api.MemberDead, now.Add(-Grace)
		}, []string{"c"}},
		{"dead without a time loses it", func(in *Input) { in.Nodes[1].State = api.MemberDead }, []string{"c"}},
		{"dead without a clock loses it", func(in *Input) {
			in.Nodes[1].State, in.Nodes[1].Since, in.Now = api.MemberDead, now, time.Time{}
		}, []string{"c"}},
		{"left goes at once", func(in *Input) {
			in.Nodes[1].State, in.Nodes[1].Since = api.MemberLeft, now
		}, []string{"c"}},
		{"remembered node gossip does not list yet", func(in *Input) {
			in.Nodes = in.Nodes[:1] // gossip knows only self right after start
			in.Remembered = []Node{w.node("b", "192.0.2.2", api.MemberAlive), w.node("d", "192.0.2.4", api.MemberAlive)}
			in.RememberedUntil = now.Add(time.Second)
		}, []string{"b", "d"}},
		{"remembered nodes past their grace", func(in *Input) {
			in.Nodes = in.Nodes[:1]
			in.Remembered = []Node{w.node("b", "192.0.2.2", api.MemberAlive)}
			in.RememberedUntil = now
		}, nil},
		{"gossip's left beats remembered", func(in *Input) {
			in.Nodes[1].State, in.Nodes[1].Since = api.MemberLeft, now
			in.Remembered = []Node{w.node("b", "192.0.2.2", api.MemberAlive)}
			in.RememberedUntil = now.Add(Grace)
		}, []string{"c"}},
		{"remembered self is ignored", func(in *Input) {
			in.Remembered = []Node{w.node("a", "192.0.2.1", api.MemberAlive)}
			in.RememberedUntil = now.Add(Grace)
		}, []string{"b", "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := w.input()
			in.Now = now
			tt.mutate(&in)
			if got := peerNames(t, w, in); !slices.Equal(got, tt.want) {
				t.Fatalf("peers %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRememberedNodeGetsItsRanges: a remembered node's peer carries the
// ranges the (persisted) ring gives it and its remembered endpoint, so
// traffic to its pods flows before gossip has rejoined.
func TestRememberedNodeGetsItsRanges(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	now := time.Now()
	in := w.input()
	in.Now = now
	in.Remembered = in.Nodes[1:]
	in.Nodes = in.Nodes[:1]
	in.RememberedUntil = now.Add(Grace)
	cfg, err := Desired(in)
	if err != nil {
		t.Fatal(err)
	}
	full := w.input()
	want, err := Desired(full)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Equal(want) {
		t.Fatalf("config from remembered nodes\n%+v\ndiffers from the one gossip gives\n%+v", cfg, want)
	}
}
