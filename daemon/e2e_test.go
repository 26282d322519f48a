package daemon

import (
	"net/netip"
	"testing"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/mesh"
)

// TestE2EAddrOf: a member's end-to-end address counts only when it parses
// and lies in the cluster range; anything else relays it hop by hop.
func TestE2EAddrOf(t *testing.T) {
	cluster := netip.MustParsePrefix("10.32.0.0/12")
	for _, tc := range []struct {
		name string
		meta mesh.Meta
		want string
	}{
		{"none", mesh.Meta{}, ""},
		{"no address", mesh.Meta{Paths: &mesh.PathMeta{Version: 1}}, ""},
		{"in the range", mesh.Meta{Paths: &mesh.PathMeta{Version: 1, E2E: "10.32.0.9"}}, "10.32.0.9"},
		{"outside the range", mesh.Meta{Paths: &mesh.PathMeta{Version: 1, E2E: "192.168.1.1"}}, ""},
		{"garbage", mesh.Meta{Paths: &mesh.PathMeta{Version: 1, E2E: "10.32.0.9/32"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, ok := e2eAddrOf(tc.meta, cluster)
			if got := map[bool]string{true: a.String(), false: ""}[ok]; got != tc.want {
				t.Errorf("e2eAddrOf = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestInnerDeviceName: mesh-e2e beside the default device, else a name
// derived from --wg-device that fits a link name and differs from it.
func TestInnerDeviceName(t *testing.T) {
	for _, tc := range []struct{ wg, want string }{
		{fastdp.DefaultDeviceName, fastdp.DefaultInnerDeviceName},
		{"wg1", "wg1-e2e"},
		{"a-long-wg-name1", "a-long-wg-n-e2e"},
	} {
		c := DefaultConfig()
		c.WGDevice = tc.wg
		if got := c.innerDevice(); got != tc.want || len(got) > 15 || got == tc.wg {
			t.Errorf("innerDevice of %q = %q, want %q", tc.wg, got, tc.want)
		}
	}
}
