package mesh

import (
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

func TestRemovalRefusal(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	self := func(started time.Duration) Member {
		return Member{Name: "op", Self: true, State: api.MemberAlive, Since: ago(started)}
	}
	peer := func(name string, state api.MemberState, since time.Duration) Member {
		return Member{Name: name, State: state, Since: ago(since)}
	}
	tests := []struct {
		name    string
		target  string
		members []Member
		want    string // "" = accepted
	}{
		{"self", "op", []Member{self(time.Hour)}, "is this node"},
		{"alive", "b", []Member{self(time.Hour), peer("b", api.MemberAlive, time.Hour)}, "it is alive"},
		{"suspect", "b", []Member{self(time.Hour), peer("b", api.MemberSuspect, time.Hour)}, "it is suspect"},
		{"just died", "b", []Member{self(time.Hour), peer("b", api.MemberDead, 10*time.Second), peer("c", api.MemberAlive, time.Hour)}, "try again in 30s"},
		{"dead long enough", "b", []Member{self(time.Hour), peer("b", api.MemberDead, time.Minute), peer("c", api.MemberAlive, time.Hour)}, ""},
		{"left long enough, alone", "b", []Member{self(time.Hour), peer("b", api.MemberLeft, time.Minute)}, ""},
		// The restart of the operator's daemon: the live peer is not
		// known yet, as this daemon has not joined anyone.
		{"unknown right after start", "b", []Member{self(2 * time.Second)}, "this node started 2s ago"},
		{"unknown right after joining", "b", []Member{self(time.Hour), peer("c", api.MemberAlive, 5*time.Second)}, "this node joined the mesh 5s ago"},
		{"unknown, joined long ago", "b", []Member{self(time.Hour), peer("c", api.MemberAlive, time.Hour)}, ""},
		{"unknown, alone long since start", "b", []Member{self(time.Hour)}, ""},
		{"unknown, just lost the last peer", "b", []Member{self(time.Hour), peer("c", api.MemberDead, 3*time.Second)}, "lost its last live peer 3s ago"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := RemovalRefusal(tt.target, tt.members, now)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("accepted, want a refusal containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("refusal %q does not contain %q", err, tt.want)
			}
		})
	}
}
