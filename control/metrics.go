package control

import (
	"fmt"
	"net/http"
	"time"
)

// Probes answers the kubelet's probes. Neither method blocks: both read
// state the daemon's loops keep.
type Probes interface {
	// Healthy is nil while the main loops make progress: a daemon wedged
	// in the IPAM or the data plane fails it, and is restarted.
	Healthy(now time.Time) error
	// Ready is nil once pods can be served (the one readiness predicate).
	Ready() error
}

// MetricsHandler serves Prometheus /metrics from metrics and the probes
// /healthz and /readyz (503 with the reason when they fail).
func MetricsHandler(metrics http.Handler, p Probes) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		probe(w, p.Healthy(time.Now()))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		probe(w, p.Ready())
	})
	return mux
}

func probe(w http.ResponseWriter, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
