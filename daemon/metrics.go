package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/meshnet/mesh/ipam"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// startMetrics serves Prometheus /metrics and the probes /healthz and
// /readyz on --metrics-addr.
func (d *Daemon) startMetrics() error {
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{d: d})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		// Alive as long as the API answers: a wedged daemon fails this.
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := d.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	l, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("failed to listen on --metrics-addr %s: %w", d.cfg.MetricsAddr, err)
	}
	d.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go d.metrics.Serve(l)
	return nil
}

// ready reports whether pods can be served: the node owns addresses and
// the data plane took its configuration.
func (d *Daemon) ready() error {
	if _, ok := d.ipam.OverlayIP(); !ok {
		return errors.New("not ready: IPAM owns no range yet (status: " + d.ipam.Status().Status + ")")
	}
	if !d.policyReady() {
		return errors.New("not ready: NetworkPolicy rules not built from the API yet")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dp != nil && !d.dpReady {
		if d.reconcile.lastErr != nil {
			return fmt.Errorf("not ready: data plane: %w", d.reconcile.lastErr)
		}
		return errors.New("not ready: data plane not configured yet")
	}
	return nil
}

var (
	descPeers      = prometheus.NewDesc("mesh_peers", "Members of the mesh by state, this node included.", []string{"state"}, nil)
	descConns      = prometheus.NewDesc("mesh_connections", "Data-plane connections by state.", []string{"state"}, nil)
	descHandshake  = prometheus.NewDesc("mesh_handshake_age_seconds", "Seconds since the last WireGuard handshake with a peer.", []string{"peer"}, nil)
	descRx         = prometheus.NewDesc("mesh_peer_rx_bytes_total", "Bytes received from a peer over the data plane.", []string{"peer"}, nil)
	descTx         = prometheus.NewDesc("mesh_peer_tx_bytes_total", "Bytes sent to a peer over the data plane.", []string{"peer"}, nil)
	descIPAM       = prometheus.NewDesc("mesh_ipam_addresses", "Addresses of this node by kind: owned, allocated, free.", []string{"kind"}, nil)
	descBlocked    = prometheus.NewDesc("mesh_ipam_blocked", "1 for the kind of wait that currently stops this node's IPAM (see mesh status ipam), 0 for the others.", []string{"reason"}, nil)
	descUnreach    = prometheus.NewDesc("mesh_ipam_unreachable_owned_addresses", "Addresses of the cluster range owned by peers this node cannot reach.", nil, nil)
	descRecErr     = prometheus.NewDesc("mesh_reconcile_errors_total", "Data-plane reconciliations that failed.", nil, nil)
	descRecRuns    = prometheus.NewDesc("mesh_reconcile_runs_total", "Data-plane reconciliations run.", nil, nil)
	descDenied     = prometheus.NewDesc("mesh_policy_denied_packets_total", "Packets dropped on this node because of one NetworkPolicy.", []string{"policy"}, nil)
	descRecSeconds = prometheus.NewDesc("mesh_reconcile_duration_seconds", "Duration of the last data-plane reconciliation.", nil, nil)
)

// collector reads the daemon's state at scrape time, so metrics and status
// can never disagree.
type collector struct{ d *Daemon }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPeers, descConns, descHandshake, descRx, descTx, descIPAM, descBlocked, descUnreach, descRecErr, descRecRuns, descRecSeconds, descDenied} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	peers := map[string]int{"alive": 0, "suspect": 0, "dead": 0, "left": 0}
	for _, m := range d.members.Members() {
		peers[m.State]++
	}
	for s, n := range peers {
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n), s)
	}
	st := d.ipam.Status()
	var owned, unreachable uint64
	for _, p := range st.Peers {
		if p.Name == d.id.Name {
			owned = p.Owned
		}
		if !p.Reachable {
			unreachable += p.Owned
		}
	}
	ch <- prometheus.MustNewConstMetric(descIPAM, prometheus.GaugeValue, float64(owned), "owned")
	ch <- prometheus.MustNewConstMetric(descIPAM, prometheus.GaugeValue, float64(st.Allocated), "allocated")
	ch <- prometheus.MustNewConstMetric(descIPAM, prometheus.GaugeValue, float64(st.Free), "free")
	for _, r := range ipam.BlockedReasons {
		v := 0.0
		if r == st.BlockedReason {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descBlocked, prometheus.GaugeValue, v, r)
	}
	if d.policy != nil {
		for name, n := range d.policy.DeniedPackets() {
			ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(n), name)
		}
	}
	ch <- prometheus.MustNewConstMetric(descUnreach, prometheus.GaugeValue, float64(unreachable))
	if d.dp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conns := map[string]int{"established": 0, "connecting": 0, "failed": 0}
	now := time.Now()
	for _, cn := range d.connections(ctx) {
		conns[cn.State]++
		ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, float64(cn.RxBytes), cn.Peer)
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(cn.TxBytes), cn.Peer)
		if t, err := time.Parse(time.RFC3339, cn.LastHandshake); err == nil {
			ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.GaugeValue, now.Sub(t).Seconds(), cn.Peer)
		}
	}
	for s, n := range conns {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(n), s)
	}
	d.mu.Lock()
	rs := d.reconcile
	d.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descRecErr, prometheus.CounterValue, float64(rs.errors))
	ch <- prometheus.MustNewConstMetric(descRecRuns, prometheus.CounterValue, float64(rs.runs))
	ch <- prometheus.MustNewConstMetric(descRecSeconds, prometheus.GaugeValue, rs.duration.Seconds())
}
