package mesh

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// A member this node suspects is pinged again until it answers, so a false
// suspicion leaves the status within seconds, not when memberlist's own
// probe comes round to that member again (made a minute away here); one
// that does not answer stays suspect.
func TestSuspicionClearsWhenMemberAnswers(t *testing.T) {
	key := make([]byte, 32)
	slow := func(name string, targets ...string) *Membership {
		cfg := testConfig(t, name, key, targets...)
		cfg.probeInterval = time.Minute
		cfg.reprobeEvery = 200 * time.Millisecond
		return startWith(t, cfg)
	}
	a := slow("a")
	slow("b", a.LocalAddr().String())
	c := slow("c", a.LocalAddr().String())
	waitFor(t, "three alive members on a", func() bool {
		s := states(a)
		return s["b"] == string(api.MemberAlive) && s["c"] == string(api.MemberAlive)
	})

	// A false suspicion (what a probe lost under load leaves): b answers.
	a.suspected("b")
	if got := states(a)["b"]; got != string(api.MemberSuspect) {
		t.Fatalf("b is %q on a after a failed probe, want suspect", got)
	}
	waitWithin(t, 5*time.Second, "a's suspicion of b to clear", func() bool {
		return states(a)["b"] == string(api.MemberAlive)
	})

	// A real one: c is gone without a word (its transport closed, no
	// leave), so no ping is answered and c stays suspect on a.
	if err := c.list.Shutdown(); err != nil {
		t.Fatal(err)
	}
	a.suspected("c")
	time.Sleep(2 * time.Second)
	if got := states(a)["c"]; got != string(api.MemberSuspect) {
		t.Fatalf("c, which answers nothing, is %q on a, want suspect", got)
	}
}
