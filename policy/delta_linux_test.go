package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	networkingv1 "k8s.io/api/networking/v1"
)

// TestApplyChangesInPlace: on the kernel's nftables, a sequence of changes
// applied in place (one transaction of only what changed each) leaves the
// same table as writing each ruleset whole into an empty namespace: pods,
// peers, policies and namespace labels changing, a policy deleted, and
// everything undone. Each Apply took the in-place path (its operations are
// the delta's, not a rewrite's).
func TestApplyChangesInPlace(t *testing.T) {
	testnet.RequireRoot(t)
	inPlaceNS, wholeNS := netnstest.New(t), netnstest.New(t)
	inPlace, whole := nftIn(t, inPlaceNS), nftIn(t, wholeNS)

	st := scaleState(1000)
	steps := []struct {
		name string
		st   State
	}{{"start", st}}
	cur := st
	for _, c := range scaleChanges(1000) {
		cur = c.apply(cur)
		steps = append(steps, struct {
			name string
			st   State
		}{c.name, cur})
	}
	del := cur
	del.Policies = slices.DeleteFunc(slices.Clone(del.Policies), func(np *networkingv1.NetworkPolicy) bool { return np.Name == "pol1" || np.Name == "pol3" })
	steps = append(steps, struct {
		name string
		st   State
	}{"two policies of this node deleted", del}, struct {
		name string
		st   State
	}{"back to the start", st})

	var prev *Ruleset
	for i, s := range steps {
		rs := Build(s.st)
		if err := inPlace.Apply(rs); err != nil {
			t.Fatalf("step %d (%s): in place: %v", i, s.name, err)
		}
		if prev != nil {
			if want := diffRulesets(prev, rs).ops(); inPlace.LastOps() != want {
				t.Errorf("step %d (%s): %d operations, the change has %d: the table was rewritten", i, s.name, inPlace.LastOps(), want)
			}
		}
		prev = rs
		whole.Forget()
		if err := whole.Apply(rs); err != nil {
			t.Fatalf("step %d (%s): whole: %v", i, s.name, err)
		}
		got := canonicalTable(netnstest.Run(t, inPlaceNS, "nft", "list", "table", "inet", TableName))
		want := canonicalTable(netnstest.Run(t, wholeNS, "nft", "list", "table", "inet", TableName))
		if !strings.Contains(want, "chain ingress-") || !strings.Contains(want, "elements = {10.") {
			t.Fatalf("step %d (%s): the listing holds no pod chains or elements:\n%s", i, s.name, want)
		}
		if got != want {
			t.Fatalf("step %d (%s): the table changed in place differs from the one written whole: %s", i, s.name, firstDiff(want, got))
		}
		t.Logf("step %d (%s): %d operations", i, s.name, inPlace.LastOps())
	}
}

// canonicalTable makes two listings of one table comparable whatever the
// order objects were made in: the top-level blocks sorted, and the
// elements of each set and map sorted (rules keep their order).
func canonicalTable(s string) string {
	s = counterRE.ReplaceAllString(s, "packets 0 bytes 0")
	var blocks []string
	var cur []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "\t\t") && strings.HasSuffix(l, "{") {
			cur = []string{l}
			continue
		}
		if cur == nil {
			continue
		}
		if l == "\t}" {
			blocks = append(blocks, sortElements(strings.Join(cur, "\n")))
			cur = nil
			continue
		}
		if strings.TrimSpace(l) != "" {
			cur = append(cur, l)
		}
	}
	slices.Sort(blocks)
	return strings.Join(blocks, "\n")
}

// sortElements sorts the elements of "elements = { a, b, c }" in a block.
func sortElements(b string) string {
	start := strings.Index(b, "elements = {")
	if start < 0 {
		return b
	}
	end := strings.Index(b[start:], "}")
	if end < 0 {
		return b
	}
	inner := b[start+len("elements = {") : start+end]
	var elems []string
	for _, e := range strings.Split(inner, ",") {
		if e = strings.Join(strings.Fields(e), " "); e != "" {
			elems = append(elems, e)
		}
	}
	slices.Sort(elems)
	return b[:start] + fmt.Sprintf("elements = {%s}", strings.Join(elems, ", ")) + b[start+end+1:]
}
