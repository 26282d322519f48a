package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// identityRefusals reads mesh_identity_refused_total{reason} from h's metrics.
func identityRefusals(h *testnet.Host, reason string) (int, error) {
	code, body, err := httpGet(h, "http://127.0.0.1:6782/metrics")
	if err != nil || code != 200 {
		return 0, fmt.Errorf("GET /metrics = %d, %v", code, err)
	}
	m := regexp.MustCompile(`mesh_identity_refused_total\{reason="` + reason + `"\} (\d+)`).FindStringSubmatch(body)
	if m == nil {
		return 0, fmt.Errorf("no mesh_identity_refused_total{reason=%q} in the metrics", reason)
	}
	return strconv.Atoi(m[1])
}

// TestNameTakeoverRefusedUntilReleased: with host2's daemon stopped, a
// daemon on another host with host2's name and the mesh password but a
// fresh state dir (a new signing identity) is refused by the others
// (metric, status problem naming it once, host2 stays dead, host2's ranges
// stay host2's and no WireGuard peer points to the impostor). After `mesh
// forget-identity` on each of them, the new identity is accepted.
func TestNameTakeoverRefusedUntilReleased(t *testing.T) {
	tn, nodes := startMesh(t, 3)
	h1, h2, h3 := nodes[0], nodes[1], nodes[2]
	others := []*node{h1, h3}
	name2 := h2.Host.Name
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	identity2 := ""
	for _, p := range h1.MustStatus().Peers {
		if p.Name == name2 {
			identity2 = p.Identity
		}
	}
	if identity2 == "" {
		t.Fatalf("%s shows %s without a verified identity", h1.Host.Name, name2)
	}
	owned2 := map[string]bool{}
	for _, r := range h1.MustStatus().IPAM.Ranges {
		if r.Owner == name2 {
			owned2[r.CIDR] = true
		}
	}
	if len(owned2) == 0 {
		t.Fatalf("%s owns no range before the test", name2)
	}

	if err := h2.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	expectStates(t, detectTimeout, others, map[string]string{name2: "dead"}, false)

	thiefHost := tn.AddHost(t)
	thief := launch(t, thiefHost, []*testnet.Host{h1.Host, h3.Host}, "--name", name2)
	dumpLogsOnFailure(t, thief)
	testnet.Eventually(t, 90*time.Second, time.Second, func() error {
		for _, n := range others {
			c, err := identityRefusals(n.Host, "other-identity")
			if err != nil {
				return err
			}
			if c == 0 {
				return fmt.Errorf("%s has refused nothing yet", n.Host.Name)
			}
		}
		return nil
	})
	// Beyond memberlist's dead-node reclaim time and a state exchange.
	time.Sleep(25 * time.Second)
	for _, n := range others {
		st := n.MustStatus()
		for _, p := range st.Peers {
			if p.Name == name2 && p.State != api.MemberDead {
				t.Errorf("%s shows %s as %s after the takeover attempt, want dead", n.Host.Name, name2, p.State)
			}
		}
		named := 0
		for _, p := range st.Problems {
			if strings.Contains(p, "refused node "+name2) {
				named++
			}
		}
		if named != 1 {
			t.Errorf("%s names %s %d times in its problems, want once: %q", n.Host.Name, name2, named, st.Problems)
		}
		for _, r := range st.IPAM.Ranges {
			if owned2[r.CIDR] && r.Owner != name2 {
				t.Errorf("%s: range %s of %s moved to %s", n.Host.Name, r.CIDR, name2, r.Owner)
			}
		}
		for _, c := range st.Connections {
			if strings.HasPrefix(c.Endpoint, thiefHost.Addr.String()+":") {
				t.Errorf("%s has a WireGuard peer at the impostor's address: %+v", n.Host.Name, c)
			}
		}
	}
	if t.Failed() {
		return
	}

	for _, n := range others {
		out, err := n.Host.Run(ctx, n.Bin, "forget-identity", name2)
		if err != nil || !strings.Contains(out, "released") {
			t.Fatalf("forget-identity %s on %s: %v\n%s", name2, n.Host.Name, err, out)
		}
	}
	testnet.Eventually(t, 120*time.Second, time.Second, func() error {
		for _, n := range others {
			st, err := n.Status()
			if err != nil {
				return err
			}
			ok := false
			for _, p := range st.Peers {
				ok = ok || p.Name == name2 && p.State == api.MemberAlive && p.Identity != "" && p.Identity != identity2
			}
			if !ok {
				return fmt.Errorf("%s does not show the new identity of %s alive yet: %+v", n.Host.Name, name2, st.Peers)
			}
			for _, p := range st.Problems {
				if strings.Contains(p, "refused node "+name2) {
					return fmt.Errorf("%s still names %s in its problems", n.Host.Name, name2)
				}
			}
		}
		return nil
	})
}
