package promtext

import (
	"math"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var (
	testGauge   = NewDesc("mesh_test_peers", "Peers by state.\nSecond line with a \\ backslash.", Gauge, "state")
	testCounter = NewDesc("mesh_test_total", "A counter without labels.", Counter)
	testTwo     = NewDesc("mesh_test_bytes_total", "Bytes by peer and kind.", Counter, "peer", "kind")
)

// TestRoundTrip: what WriteTo writes parses with the Prometheus project's
// own parser into the same families, types, label values (hostile ones
// included: a label value comes from a peer's name) and values.
func TestRoundTrip(t *testing.T) {
	hostile := "a\"b\\c\nd}{,=é"
	var s Set
	s.Add(testGauge, 3, "alive")
	s.Add(testGauge, 0, "dead")
	s.Add(testCounter, 1<<53)
	s.Add(testTwo, 1.5, hostile, "rx")
	s.Add(testTwo, math.Inf(1), "host2", "tx")
	var b strings.Builder
	if _, err := s.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("parse:\n%s\n%v", b.String(), err)
	}
	if len(fams) != 3 {
		t.Fatalf("families %v, want 3", fams)
	}
	g := fams["mesh_test_peers"]
	if g.GetType().String() != "GAUGE" || g.GetHelp() != testGauge.help || len(g.Metric) != 2 {
		t.Errorf("gauge family = %v", g)
	}
	if c := fams["mesh_test_total"]; c.GetType().String() != "COUNTER" || c.Metric[0].GetCounter().GetValue() != 1<<53 {
		t.Errorf("counter family = %v", c)
	}
	got := map[string]float64{}
	for _, m := range fams["mesh_test_bytes_total"].Metric {
		got[m.Label[0].GetValue()+"/"+m.Label[1].GetValue()] = m.GetCounter().GetValue()
	}
	if got[hostile+"/rx"] != 1.5 || !math.IsInf(got["host2/tx"], 1) {
		t.Errorf("two-label family = %v", got)
	}
}

// TestDeterministic: the same samples added in another order give the same
// bytes.
func TestDeterministic(t *testing.T) {
	write := func(order []string) string {
		var s Set
		for _, st := range order {
			s.Add(testGauge, 1, st)
		}
		var b strings.Builder
		if _, err := s.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	a, b := write([]string{"alive", "dead", "suspect"}), write([]string{"suspect", "alive", "dead"})
	if a != b {
		t.Errorf("order changed the output:\n%s\n%s", a, b)
	}
}

// TestInvalid: a sample with the wrong number of label values or twice the
// same labels makes the scrape fail with the metric's name (500), rather
// than serve a family Prometheus would reject whole.
func TestInvalid(t *testing.T) {
	tests := []struct {
		name    string
		collect func(*Set)
		want    string
	}{
		{name: "missing label", collect: func(s *Set) { s.Add(testGauge, 1) }, want: "mesh_test_peers: 0 label values"},
		{name: "extra label", collect: func(s *Set) { s.Add(testCounter, 1, "x") }, want: "mesh_test_total: 1 label values"},
		{name: "duplicate", collect: func(s *Set) { s.Add(testGauge, 1, "alive"); s.Add(testGauge, 2, "alive") }, want: "two samples"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(tt.collect).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			if rec.Code != 500 || !strings.Contains(rec.Body.String(), tt.want) {
				t.Errorf("= %d %q, want 500 containing %q", rec.Code, rec.Body, tt.want)
			}
		})
	}
}

// TestNewDescRejects names the format does not allow.
func TestNewDescRejects(t *testing.T) {
	for _, tt := range []struct {
		name, metric string
		labels       []string
	}{
		{name: "dash in name", metric: "mesh-peers"},
		{name: "leading digit", metric: "1mesh"},
		{name: "reserved label", metric: "mesh_x", labels: []string{"__name"}},
		{name: "label with dot", metric: "mesh_x", labels: []string{"a.b"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("NewDesc(%q, %q) did not panic", tt.metric, tt.labels)
				}
			}()
			NewDesc(tt.metric, "help", Gauge, tt.labels...)
		})
	}
}

// TestHandler serves the content type Prometheus negotiates for text.
func TestHandler(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler(func(s *Set) { s.Add(testCounter, 7) }).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != ContentType || !strings.Contains(rec.Body.String(), "\nmesh_test_total 7\n") {
		t.Errorf("= %d %q %q", rec.Code, rec.Header(), rec.Body)
	}
}
