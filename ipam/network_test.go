package ipam

import (
	"context"
	"slices"
	"testing"
)

// TestReleaseAllExceptInTouchesOneNetwork: CNI GC of one network frees only
// that network's stale allocations, never another network's nor those of
// unknown network (written by an older plugin or state file), also after a
// restart from the state file.
func TestReleaseAllExceptInTouchesOneNetwork(t *testing.T) {
	cfg := testConfig(t, "a", "10.0.0.0/24")
	a := mustNew(t, cfg, nil)
	ctx := context.Background()
	for _, al := range []struct{ network, id string }{
		{"net-a", "a1"}, {"net-a", "a2"}, {"net-b", "b1"}, {"", "old"},
	} {
		if _, err := a.AllocateIn(ctx, al.network, al.id, "eth0"); err != nil {
			t.Fatalf("AllocateIn(%q, %q): %v", al.network, al.id, err)
		}
	}
	// Asking again under another network keeps the recorded one.
	if _, err := a.AllocateIn(ctx, "net-b", "a1", "eth0"); err != nil {
		t.Fatal(err)
	}
	// Restart from the state file (no Close, as after a SIGKILL).
	a = mustNew(t, cfg, nil)
	nets := map[string]string{}
	for _, al := range a.List() {
		nets[al.ContainerID] = al.Network
	}
	if want := map[string]string{"a1": "net-a", "a2": "net-a", "b1": "net-b", "old": ""}; !mapsEqual(nets, want) {
		t.Fatalf("networks after restart = %v, want %v", nets, want)
	}
	steps := []struct {
		name    string
		network string
		valid   []Key
		want    int
		left    []string
	}{
		{"nameless GC frees nothing", "", nil, 0, []string{"a1", "a2", "b1", "old"}},
		{"other network frees nothing of net-a", "net-c", nil, 0, []string{"a1", "a2", "b1", "old"}},
		{"net-a keeps its valid ones", "net-a", []Key{{"a1", "eth0"}, {"b1", "eth0"}}, 1, []string{"a1", "b1", "old"}},
		{"net-b with an empty list", "net-b", nil, 1, []string{"a1", "old"}},
	}
	for _, s := range steps {
		n, err := a.ReleaseAllExceptIn(s.network, s.valid)
		if err != nil || n != s.want {
			t.Fatalf("%s: ReleaseAllExceptIn = %d, %v; want %d, nil", s.name, n, err, s.want)
		}
		var left []string
		for _, al := range a.List() {
			left = append(left, al.ContainerID)
		}
		slices.Sort(left)
		if !slices.Equal(left, s.left) {
			t.Fatalf("%s: left %v, want %v", s.name, left, s.left)
		}
	}
	// A released key allocated again under a network records the new one.
	if err := a.Release("a1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateIn(ctx, "net-c", "a1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if n, err := a.ReleaseAllExceptIn("net-a", nil); err != nil || n != 0 {
		t.Fatalf("net-a GC after re-allocation in net-c = %d, %v; want 0", n, err)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
