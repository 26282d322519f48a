package daemon

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/mesh"
)

// TestRemovalTurn: the nodes remove a deleted Node's peer in turns by name
// among the live members, so that usually one node broadcasts the removal
// (docs/scale.md); dead members and the deleted node itself take no turn.
func TestRemovalTurn(t *testing.T) {
	members := func(spec ...string) []mesh.Member {
		var out []mesh.Member
		for i := 0; i+1 < len(spec); i += 2 {
			out = append(out, mesh.Member{Name: spec[i], State: api.MemberState(spec[i+1])})
		}
		return out
	}
	many := members()
	for i := range 100 {
		many = append(many, mesh.Member{Name: string(rune('A'+i/26)) + string(rune('a'+i%26)), State: api.MemberAlive})
	}
	tests := []struct {
		name          string
		self, deleted string
		members       []mesh.Member
		want          time.Duration
	}{
		{name: "first in name order", self: "a", deleted: "c", members: members("a", "alive", "b", "alive", "c", "alive"), want: 0},
		{name: "second", self: "b", deleted: "c", members: members("a", "alive", "b", "alive", "c", "alive"), want: removalStagger},
		{name: "the deleted node takes no turn", self: "b", deleted: "a", members: members("a", "alive", "b", "alive", "c", "alive"), want: 0},
		{name: "dead members take no turn", self: "c", deleted: "d", members: members("a", "dead", "b", "left", "c", "alive", "d", "alive"), want: 0},
		{name: "a suspect member takes its turn", self: "c", deleted: "d", members: members("a", "suspect", "c", "alive", "d", "alive"), want: removalStagger},
		{name: "capped", self: "Zz", deleted: "x", members: many, want: removalStaggerMax},
		{name: "self not in the view yet", self: "m", deleted: "x", members: members("a", "alive", "z", "alive"), want: removalStagger},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := removalTurn(tt.self, tt.deleted, tt.members); got != tt.want {
				t.Errorf("removalTurn(%s, %s) = %v, want %v", tt.self, tt.deleted, got, tt.want)
			}
		})
	}
}
