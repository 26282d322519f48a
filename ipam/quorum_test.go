package ipam

import "testing"

// TestQuorumsOverlapWithOneVoterSlack: a lease quorum counted over n voters
// and a reclaim quorum counted over n-1 (one joiner known to one side only)
// still share a voter. The heir counts at least two voters: itself and the
// peer it reclaims.
func TestQuorumsOverlapWithOneVoterSlack(t *testing.T) {
	lease := func(n int) int { return (n + 1) / 2 }
	for n := 1; n <= 200; n++ {
		for _, other := range []int{n - 1, n, n + 1} {
			if other < 2 {
				continue
			}
			universe := max(n, other)
			if lease(n)+reclaimQuorum(other) <= universe && reclaimQuorum(other) <= other {
				t.Errorf("lease quorum %d of %d and reclaim quorum %d of %d can be disjoint in %d voters", lease(n), n, reclaimQuorum(other), other, universe)
			}
		}
		if r := reclaimQuorum(n); r > n || r < n/2+1 {
			t.Errorf("reclaimQuorum(%d) = %d, want a majority of at most n", n, r)
		}
	}
}
