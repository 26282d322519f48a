package peer

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// graphReports builds the reports of nodes whose direct paths are the
// edges listed ("a-b"): each node reports every other node down that it
// has no edge to.
func graphReports(nodes string, edges ...string) []PathReport {
	names := strings.Fields(nodes)
	up := map[[2]string]bool{}
	for _, e := range edges {
		a, b, _ := strings.Cut(e, "-")
		up[[2]string{a, b}], up[[2]string{b, a}] = true, true
	}
	var out []PathReport
	for _, n := range names {
		r := PathReport{Name: n, Live: true, Known: true}
		for _, o := range names {
			if o != n && !up[[2]string{n, o}] {
				r.Down = append(r.Down, o)
			}
		}
		out = append(out, r)
	}
	return out
}

// with changes the report of name in reports.
func with(reports []PathReport, name string, f func(*PathReport)) []PathReport {
	out := slices.Clone(reports)
	for i := range out {
		if out[i].Name == name {
			f(&out[i])
		}
	}
	return out
}

// Multi-hop: the next hop towards each peer, from a node's own position.
func TestRelaysMultiHop(t *testing.T) {
	chain := graphReports("h1 h2 h3 h4", "h1-h2", "h2-h3", "h3-h4")
	// Two paths of three hops between a and d: a-b-z-d and a-y-c-d. Their
	// worst relays are z and y: the path through y and c wins, although a
	// would pick b and d would pick c if each took its smallest neighbour.
	twoWays := graphReports("a b c d y z", "a-b", "b-z", "z-d", "a-y", "y-c", "c-d")
	square := graphReports("a b c d", "a-b", "a-c", "b-d", "c-d")
	tests := []relayCase{
		{name: "chain from the start", self: "h1", reports: chain, want: map[string]string{"h3": "h2", "h4": "h2"}},
		{name: "chain from the first relay", self: "h2", reports: chain, want: map[string]string{"h4": "h3"}},
		{name: "chain from the second relay", self: "h3", reports: chain, want: map[string]string{"h1": "h2"}},
		{name: "chain from the end", self: "h4", reports: chain, want: map[string]string{"h1": "h3", "h2": "h3"}},
		{name: "shorter path wins over a smaller name", self: "a",
			reports: graphReports("a b c d e", "a-b", "b-c", "c-e", "a-d", "d-e"), want: map[string]string{"c": "b", "e": "d"}},
		{name: "tie: smallest name among one-hop relays", self: "a", reports: square, want: map[string]string{"d": "b"}},
		{name: "tie: the other end picks the same relay", self: "d", reports: square, want: map[string]string{"a": "b"}},
		{name: "tie: preference before the name", self: "a",
			reports: with(square, "c", func(r *PathReport) { r.Preference = 1 }), want: map[string]string{"d": "c"}},
		{name: "tie: preference from the other end", self: "d",
			reports: with(square, "c", func(r *PathReport) { r.Preference = 1 }), want: map[string]string{"a": "c"}},
		{name: "tie: a negative preference avoids the node", self: "a",
			reports: with(square, "b", func(r *PathReport) { r.Preference = -1 }), want: map[string]string{"d": "c"}},
		{name: "tie: the worst relay decides", self: "a", reports: twoWays,
			want: map[string]string{"c": "y", "d": "y", "z": "b"}},
		{name: "tie: the worst relay decides from the other end", self: "d", reports: twoWays,
			want: map[string]string{"a": "c", "y": "c", "b": "z"}},
		{name: "tie: the worst relay decides in the middle", self: "y", reports: twoWays,
			want: map[string]string{"d": "c", "b": "a", "z": "a"}},
		{name: "no path", self: "a",
			reports: graphReports("a b c d", "a-b", "c-d"), want: map[string]string{}},
		{name: "no-relay node in the middle cuts the chain", self: "h1",
			reports: with(chain, "h3", func(r *PathReport) { r.NoRelay = true }), want: map[string]string{"h3": "h2"}},
		{name: "no-relay node in the middle is gone around", self: "a",
			reports: with(graphReports("a b c d e", "a-b", "b-c", "c-d", "b-e", "e-d"), "c", func(r *PathReport) { r.NoRelay = true }),
			want:    map[string]string{"c": "b", "d": "b", "e": "b"}},
		{name: "no-relay node is still an end", self: "h1",
			reports: with(chain, "h4", func(r *PathReport) { r.NoRelay = true }), want: map[string]string{"h3": "h2", "h4": "h2"}},
		{name: "dead node in the middle is no relay", self: "h1",
			reports: with(chain, "h2", func(r *PathReport) { r.Live = false }), want: map[string]string{}},
		{name: "previous-release node in the middle is no relay", self: "h1",
			reports: with(chain, "h3", func(r *PathReport) { r.Known = false }), want: map[string]string{}},
		{name: "asymmetric reports: one end seeing a path down is enough", self: "h1",
			reports: []PathReport{
				{Name: "h1", Live: true, Known: true, Down: []string{"h4"}},
				{Name: "h2", Live: true, Known: true, Down: []string{"h4"}},
				{Name: "h3", Live: true, Known: true},
				{Name: "h4", Live: true, Known: true},
			}, want: map[string]string{"h4": "h3"}},
		{name: "asymmetric reports: the other end", self: "h4",
			reports: []PathReport{
				{Name: "h1", Live: true, Known: true, Down: []string{"h4"}},
				{Name: "h2", Live: true, Known: true, Down: []string{"h4"}},
				{Name: "h3", Live: true, Known: true},
				{Name: "h4", Live: true, Known: true},
			}, want: map[string]string{"h1": "h3", "h2": "h3"}},
		{name: "reports naming unknown nodes are ignored", self: "h1",
			reports: with(chain, "h1", func(r *PathReport) { r.Down = append(r.Down, "ghost", "h1") }), want: map[string]string{"h3": "h2", "h4": "h2"}},
	}
	runRelayCases(t, tests)
}

// The claims of docs/routing.md, "More than one hop", on random graphs:
// when every node computes from the same reports, following the next hops
// from any node reaches the destination (no loop), in as many hops as the
// shortest path, through relays only; and the way back is the same path
// reversed, so WireGuard at each hop accepts the packet from the peer it
// came from.
func TestRelaysConsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 2))
	for round := range 300 {
		n := 3 + rng.IntN(10)
		var names []string
		for i := range n {
			names = append(names, fmt.Sprintf("n%02d", i))
		}
		var edges []string
		for i := range n {
			for j := i + 1; j < n; j++ {
				if rng.IntN(3) == 0 {
					edges = append(edges, names[i]+"-"+names[j])
				}
			}
		}
		reports := graphReports(strings.Join(names, " "), edges...)
		for i := range reports {
			reports[i].Preference = rng.IntN(3) - 1
			reports[i].NoRelay = rng.IntN(8) == 0
		}
		byName := map[string]PathReport{}
		for _, r := range reports {
			byName[r.Name] = r
		}
		tables := map[string]map[string]string{}
		for _, s := range names {
			tables[s] = Relays(s, reports)
		}
		adjacent := func(a, b string) bool {
			return !slices.Contains(byName[a].Down, b) && !slices.Contains(byName[b].Down, a)
		}
		// hops is the length of the shortest path from a to d through
		// relays, by breadth-first search.
		hops := func(a, d string) int {
			dist := map[string]int{a: 0}
			queue := []string{a}
			for len(queue) > 0 {
				u := queue[0]
				queue = queue[1:]
				if u == d {
					return dist[u]
				}
				if u != a && (byName[u].NoRelay || !byName[u].Live) {
					continue
				}
				for _, v := range names {
					if _, seen := dist[v]; !seen && v != u && adjacent(u, v) {
						dist[v] = dist[u] + 1
						queue = append(queue, v)
					}
				}
			}
			return -1
		}
		// hop is where s sends traffic for d: its next hop, else direct.
		hop := func(s, d string) string {
			if v, ok := tables[s][d]; ok {
				return v
			}
			return d
		}
		for _, a := range names {
			for _, d := range names {
				if a == d {
					continue
				}
				if _, relayed := tables[a][d]; !relayed && !adjacent(a, d) {
					continue // no path: stays on the broken direct one
				}
				path := []string{a}
				for cur := a; cur != d; {
					nxt := hop(cur, d)
					if !adjacent(cur, nxt) {
						t.Fatalf("round %d: %s's next hop to %s is %s, not a direct peer (path %v)", round, cur, d, nxt, path)
					}
					if cur != a && (byName[cur].NoRelay || !byName[cur].Live) {
						t.Fatalf("round %d: path %v from %s to %s relays through %s, which does not relay", round, path, a, d, cur)
					}
					path = append(path, nxt)
					cur = nxt
					if len(path) > n {
						t.Fatalf("round %d: loop from %s to %s: %v", round, a, d, path)
					}
				}
				if want := hops(a, d); len(path)-1 != want {
					t.Fatalf("round %d: %s to %s goes %v, the shortest path has %d hops", round, a, d, path, want)
				}
				back := []string{d}
				for cur := d; cur != a && len(back) <= n; {
					cur = hop(cur, a)
					back = append(back, cur)
				}
				slices.Reverse(back)
				if !slices.Equal(path, back) {
					t.Fatalf("round %d: %s to %s goes %v, the way back %v reversed", round, a, d, path, back)
				}
			}
		}
	}
}

// The choice stays cheap for a large mesh with many broken paths: one
// Dijkstra over all nodes from self, per reconcile.
func BenchmarkRelays(b *testing.B) {
	var names []string
	for i := range 300 {
		names = append(names, fmt.Sprintf("node%03d", i))
	}
	var edges []string
	for i := range names {
		for j := i + 1; j < len(names); j++ {
			if (i+j)%3 != 0 {
				edges = append(edges, names[i]+"-"+names[j])
			}
		}
	}
	reports := graphReports(strings.Join(names, " "), edges...)
	b.ResetTimer()
	for range b.N {
		Relays(names[0], reports)
	}
}
