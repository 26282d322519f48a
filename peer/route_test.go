package peer

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/meshnet/mesh/coord"
)

// at returns a coordinate whose distance to the origin's is ms plus the
// heights (0.2 ms together).
func at(ms float64) *coord.Coordinate {
	c := coord.Origin()
	c.Vec[0] = ms
	return &c
}

// placed gives each named node a coordinate ms along the first axis;
// the others are put at the origin.
func placed(reports []PathReport, ms map[string]float64) []PathReport {
	out := slices.Clone(reports)
	for i := range out {
		out[i].Coord = at(ms[out[i].Name])
	}
	return out
}

// Latency: among the paths with the fewest hops, the lowest estimated
// latency wins, before preference and names; it counts only while every
// reporting node publishes a coordinate.
func TestRelaysLatency(t *testing.T) {
	square := graphReports("a b c d", "a-b", "a-c", "b-d", "c-d")
	chain := graphReports("h1 h2 h3 h4", "h1-h2", "h2-h3", "h3-h4")
	// b is 45 ms away from the rest: both its links count 4 steps.
	slowB := placed(square, map[string]float64{"b": 45})
	tests := []relayCase{
		{name: "the faster relay wins over the smaller name", self: "a", reports: slowB, want: map[string]string{"d": "c"}},
		{name: "the other end picks the same relay", self: "d", reports: slowB, want: map[string]string{"a": "c"}},
		{name: "latency wins over preference", self: "a",
			reports: with(slowB, "b", func(r *PathReport) { r.Preference = 100 }), want: map[string]string{"d": "c"}},
		{name: "within a step, preference decides", self: "a",
			reports: with(placed(square, map[string]float64{"b": 7}), "b", func(r *PathReport) { r.Preference = 1 }), want: map[string]string{"d": "b"}},
		{name: "within a step, the name decides", self: "a",
			reports: placed(square, map[string]float64{"b": 7}), want: map[string]string{"d": "b"}},
		{name: "a node without a coordinate turns latency off for all", self: "a",
			reports: with(slowB, "a", func(r *PathReport) { r.Coord = nil }), want: map[string]string{"d": "b"}},
		{name: "a node of an earlier release without a coordinate turns it off", self: "a",
			reports: with(slowB, "c", func(r *PathReport) { r.Coord = nil }), want: map[string]string{"d": "b"}},
		{name: "fewer hops win over latency", self: "a",
			// a-b-e (b slow) against a-c-d-e (all near).
			reports: placed(graphReports("a b c d e", "a-b", "b-e", "a-c", "c-d", "d-e"), map[string]float64{"b": 200}),
			want:    map[string]string{"e": "b", "d": "c"}},
		{name: "a slow relay in a chain is still used when it is the only way", self: "h1",
			reports: placed(chain, map[string]float64{"h2": 100}), want: map[string]string{"h3": "h2", "h4": "h2"}},
		{name: "the links' steps add up", self: "a",
			// Coordinates on a line: a at 0, b at 15, e at 30, x at 45.
			reports: placed(graphReports("a b e x", "a-b", "b-e", "a-x", "x-e"), map[string]float64{"b": 15, "e": 30, "x": 45}),
			// a-b: 1 step, b-e: 1, sum 2; a-x: 4, x-e: 1, sum 5.
			want: map[string]string{"e": "b"}},
		{name: "the links' steps add up, the other way", self: "a",
			reports: placed(graphReports("a b e x", "a-b", "b-e", "a-x", "x-e"), map[string]float64{"b": -45, "e": 30, "x": 15}),
			// a-b: 4 steps, b-e: 7, sum 11; a-x: 1, x-e: 1, sum 2.
			want: map[string]string{"e": "x"}},
	}
	runRelayCases(t, tests)
}

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
		withLatency := round%2 == 1
		for i := range reports {
			reports[i].Preference = rng.IntN(3) - 1
			reports[i].NoRelay = rng.IntN(8) == 0
			if withLatency {
				c := coord.Origin()
				for d := range c.Vec {
					c.Vec[d] = rng.Float64() * 60
				}
				c.Height += rng.Float64() * 20
				reports[i].Coord = &c
			}
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
				if withLatency {
					if got, best := pathLatency(byName, path), leastLatency(byName, names, adjacent, a, d, len(path)-1); got != best {
						t.Fatalf("round %d: %s to %s goes %v at %d latency steps, a path of as many hops has %d", round, a, d, path, got, best)
					}
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

func pathLatency(byName map[string]PathReport, path []string) int {
	sum := 0
	for i := 1; i < len(path); i++ {
		sum += latencySteps(byName[path[i-1]].Coord, byName[path[i]].Coord)
	}
	return sum
}

// leastLatency is the lowest latency of the paths of exactly hops hops
// from a to d through relays, by enumerating them.
func leastLatency(byName map[string]PathReport, names []string, adjacent func(a, b string) bool, a, d string, hops int) int {
	best := -1
	var walk func(path []string)
	walk = func(path []string) {
		cur := path[len(path)-1]
		if cur == d {
			if len(path)-1 == hops {
				if l := pathLatency(byName, path); best < 0 || l < best {
					best = l
				}
			}
			return
		}
		if len(path)-1 >= hops || (cur != a && (byName[cur].NoRelay || !byName[cur].Live)) {
			return
		}
		for _, v := range names {
			if !slices.Contains(path, v) && adjacent(cur, v) {
				walk(append(slices.Clone(path), v))
			}
		}
	}
	walk([]string{a})
	return best
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
	// With coordinates, as every node of this release publishes.
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range reports {
		c := coord.Origin()
		for d := range c.Vec {
			c.Vec[d] = rng.Float64() * 100
		}
		reports[i].Coord = &c
	}
	b.ResetTimer()
	for range b.N {
		Relays(names[0], reports)
	}
}
