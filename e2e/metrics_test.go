package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshnet/mesh/internal/testnet"
)

// httpGet fetches url from inside h's network namespace.
func httpGet(h *testnet.Host, url string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return h.Dial(ctx, network, addr)
		},
	}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestMetricsAndProbes(t *testing.T) {
	_, nodes := startMesh(t, 2)
	h := nodes[0].Host
	for _, path := range []string{"/healthz", "/readyz"} {
		code, body, err := httpGet(h, "http://127.0.0.1:6782"+path)
		if err != nil || code != 200 {
			t.Fatalf("GET %s = %d %q, %v", path, code, body, err)
		}
	}
	// Every line wanted in one answer: right after the start some lag
	// behind the connection (the IPAM learns the live members on its own
	// schedule, so a peer's space may count as unreachable for a moment).
	wanted := []string{
		`mesh_peers{state="alive"} 2`,
		`mesh_ipam_addresses{kind="owned"}`,
		`mesh_ipam_addresses{kind="allocated"} 0`,
		`mesh_ipam_unreachable_owned_addresses 0`,
		`mesh_ipam_blocked{reason="space"} 0`,
		`mesh_ipam_blocked{reason="recovery"} 0`,
		`mesh_ipam_tombstones 0`,
		`mesh_ipam_tombstones_dropped_total 0`,
		`mesh_ipam_state_bytes `,
		`mesh_peer_rx_bytes_total{peer="` + nodes[1].Host.Name + `"}`,
		`mesh_handshake_age_seconds{peer="` + nodes[1].Host.Name + `"}`,
		`mesh_reconcile_errors_total 0`,
		`mesh_reconcile_duration_seconds`,
	}
	var metrics string
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		code, body, err := httpGet(h, "http://127.0.0.1:6782/metrics")
		if err != nil || code != 200 {
			return fmt.Errorf("GET /metrics = %d, %v", code, err)
		}
		metrics = body
		if !strings.Contains(body, `mesh_connections{state="established"} 1`) {
			return fmt.Errorf("no established connection in metrics yet")
		}
		var missing []string
		for _, want := range wanted {
			if !strings.Contains(body, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("metrics lack %q:\n%s", missing, body)
		}
		return nil
	})
	// The whole answer parses with the Prometheus project's own parser
	// (the daemon writes the format itself: internal/promtext).
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(metrics))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, metrics)
	}
	if f := fams["mesh_reconcile_runs_total"]; f == nil || f.GetType().String() != "COUNTER" {
		t.Errorf("mesh_reconcile_runs_total = %v, want a counter", f)
	}
	if f := fams["mesh_peers"]; f == nil || f.GetType().String() != "GAUGE" || len(f.Metric) < 2 {
		t.Errorf("mesh_peers = %v, want a gauge per member state", f)
	}
	// The size of the IPAM state as sent is in status and its gauge.
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		st, err := nodes[0].Status()
		if err != nil || st.IPAM == nil || st.IPAM.StateBytes == 0 {
			return fmt.Errorf("status ipam.stateBytes not set yet (%v)", err)
		}
		_, body, err := httpGet(h, "http://127.0.0.1:6782/metrics")
		if err != nil || strings.Contains(body, "\nmesh_ipam_state_bytes 0\n") || !strings.Contains(body, "\nmesh_ipam_state_bytes ") {
			return fmt.Errorf("gauge mesh_ipam_state_bytes not set yet (%v)", err)
		}
		return nil
	})
	assertNoSecret(t, "metrics", metrics)
	// The metrics port listens on loopback only.
	if _, _, err := httpGet(nodes[1].Host, "http://"+h.Addr.String()+":6782/metrics"); err == nil {
		t.Fatal("metrics are reachable from another host")
	}
}
