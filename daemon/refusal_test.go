package daemon

import (
	"errors"
	"fmt"
	"testing"

	"github.com/meshnet/mesh/ipam"
)

// TestQuietRefusal: input refused by an IPAM bound is not passed on to the
// gossip layer's per-message log (the IPAM counts it); other errors are.
func TestQuietRefusal(t *testing.T) {
	other := errors.New("boom")
	for _, tc := range []struct {
		name string
		in   error
		want error
	}{
		{"refused by a bound", fmt.Errorf("%w: held: from evil", ipam.ErrRejected), nil},
		{"corrupt state", fmt.Errorf("%w: bad magic", ipam.ErrCorruptState), ipam.ErrCorruptState},
		{"other", other, other},
		{"none", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := quietRefusal(tc.in); !errors.Is(got, tc.want) || (tc.want == nil) != (got == nil) {
				t.Fatalf("quietRefusal(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}
