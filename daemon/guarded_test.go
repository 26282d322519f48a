package daemon

import (
	"errors"
	"testing"
)

// TestLastErrorChanged: a retried operation's failure is reported (logged)
// when it first happens and when it changes, not on every retry.
func TestLastErrorChanged(t *testing.T) {
	a, b := errors.New("a"), errors.New("b")
	var l lastError
	steps := []struct {
		name    string
		err     error
		changed bool
	}{
		{"success first", nil, false},
		{"first failure", a, true},
		{"same failure again", errors.New("a"), false},
		{"another failure", b, true},
		{"recovered", nil, true},
		{"still fine", nil, false},
	}
	for _, s := range steps {
		if got := l.set(s.err); got != s.changed {
			t.Fatalf("%s: set(%v) changed = %v, want %v", s.name, s.err, got, s.changed)
		}
		if got := l.get(); got != s.err {
			t.Fatalf("%s: get() = %v, want %v", s.name, got, s.err)
		}
	}
}

// TestBadMetaLogFresh: only new or changed problems are returned, and the
// record holds only the members passed last.
func TestBadMetaLogFresh(t *testing.T) {
	var b badMetaLog
	if got := b.record(map[string]string{"x": "p", "y": "q"}); len(got) != 2 {
		t.Fatalf("first record: fresh %v, want x and y", got)
	}
	if got := b.record(map[string]string{"x": "p", "y": "r"}); len(got) != 1 || got[0] != "y" {
		t.Fatalf("y's problem changed: fresh %v, want [y]", got)
	}
	b.record(map[string]string{})
	if n := b.len(); n != 0 {
		t.Fatalf("record keeps %d members that are gone", n)
	}
}
