package control

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/promtext"
)

type fakeProbes struct{ healthy, ready error }

func (p fakeProbes) Healthy(time.Time) error { return p.healthy }
func (p fakeProbes) Ready() error            { return p.ready }

// TestMetricsHandler: the probes answer 200 "ok" or 503 with the reason,
// and /metrics serves the metrics handler.
func TestMetricsHandler(t *testing.T) {
	gauge := promtext.NewDesc("mesh_test_gauge", "A gauge.", promtext.Gauge)
	metrics := promtext.Handler(func(s *promtext.Set) { s.Add(gauge, 7) })
	tests := []struct {
		name     string
		method   string
		path     string
		probes   fakeProbes
		wantCode int
		wantBody string
	}{
		{name: "healthy", method: "GET", path: "/healthz", wantCode: 200, wantBody: "ok\n"},
		{name: "wedged", method: "GET", path: "/healthz", probes: fakeProbes{healthy: errors.New("unhealthy: [reconcile loop made no progress for 2m0s]")}, wantCode: 503, wantBody: "reconcile loop made no progress"},
		{name: "ready", method: "GET", path: "/readyz", wantCode: 200, wantBody: "ok\n"},
		{name: "not ready", method: "GET", path: "/readyz", probes: fakeProbes{ready: errors.New("not ready: IPAM owns no range yet")}, wantCode: 503, wantBody: "IPAM owns no range yet"},
		{name: "metrics", method: "GET", path: "/metrics", wantCode: 200, wantBody: "mesh_test_gauge 7"},
		{name: "probe by POST", method: "POST", path: "/healthz", wantCode: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			MetricsHandler(metrics, tt.probes).ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, rec.Code, rec.Body, tt.wantCode, tt.wantBody)
			}
		})
	}
}
