package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/control"
	"github.com/meshnet/mesh/internal/promtext"
	"github.com/meshnet/mesh/isolation"
)

// startMetrics serves Prometheus /metrics and the probes /healthz and
// /readyz on --metrics-addr.
func (d *Daemon) startMetrics() error {
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	l, err := net.Listen("tcp", d.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("failed to listen on --metrics-addr %s: %w", d.cfg.MetricsAddr, err)
	}
	d.metrics = &http.Server{Handler: control.MetricsHandler(promtext.Handler((&collector{d: d}).Collect), probes{d}), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := d.metrics.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped; /metrics, /healthz and /readyz no longer answer", "addr", d.cfg.MetricsAddr, "error", err)
		}
	}()
	return nil
}

// probes is control.Probes.
type probes struct{ d *Daemon }

func (p probes) Healthy(now time.Time) error { return p.d.health.check(now) }
func (p probes) Ready() error                { return p.d.ready() }

// ready reports whether pods can be served: the node owns addresses, the
// NetworkPolicy rules are built (with --kube) and the data plane took its
// configuration. It is the one readiness predicate: /readyz answers with it
// and the CNI plugin is installed only once it holds.
func (d *Daemon) ready() error {
	if _, _, ok := d.overlayIPs(); !ok {
		return errors.New("not ready: IPAM owns no range yet (status: " + d.ipamStatusWords() + ")")
	}
	if !d.policyReady() {
		return errors.New("not ready: NetworkPolicy rules not built from the API yet")
	}
	if c := d.rec.Counters(); !c.Ready {
		if c.LastError != nil {
			return fmt.Errorf("not ready: data plane: %w", c.LastError)
		}
		return errors.New("not ready: data plane not configured yet")
	}
	return nil
}

var (
	descPeers      = promtext.NewDesc("mesh_peers", "Members of the mesh by state, this node included.", promtext.Gauge, "state")
	descRelayed    = promtext.NewDesc("mesh_relayed_peers", "Peers whose ranges this node routes through a relay because their direct path is down.", promtext.Gauge)
	descRelayBytes = promtext.NewDesc("mesh_relayed_bytes_total", "Bytes this node routed for others: IP packets forwarded from the WireGuard device back into it (nftables counter; restarts from 0 when its table is recreated).", promtext.Counter)
	descPeerRelay  = promtext.NewDesc("mesh_peer_relayed_bytes_total", "Bytes this node routed for others that came from a peer: the part of mesh_relayed_bytes_total whose source address is in the peer's own ranges (restarts from 0 when the peer's counter is made anew).", promtext.Counter, "peer")
	descGossipRly  = promtext.NewDesc("mesh_gossip_relayed_total", "Gossip packets and streams that went through a relay (docs/routing.md): sent to members reached only through one, forwarded for others, dropped (malformed, TTL spent, no live target, too many streams), refused (failed authentication: sent without the mesh key).", promtext.Counter, "kind")
	descGossipExch = promtext.NewDesc("mesh_gossip_neighbour_exchanges_total", "State exchanges with a directly reached member, started because some live member had neither a direct path nor a relay (docs/routing.md, \"Gossip through relays\").", promtext.Counter)
	descMetaUpd    = promtext.NewDesc("mesh_gossip_member_updates_total", "Metadata changes of other members received (each an alive message every member gossips on), by what changed: coordinate (the network coordinate alone), paths (the rest of the path report), other.", promtext.Counter, "kind")
	descRelayChg   = promtext.NewDesc("mesh_relay_changes_total", "Applied data-plane configs that moved a peer's ranges to a relay, to another relay or back to the direct path.", promtext.Counter)
	descConns      = promtext.NewDesc("mesh_connections", "Data-plane connections by state.", promtext.Gauge, "state")
	descHandshake  = promtext.NewDesc("mesh_handshake_age_seconds", "Seconds since the last WireGuard handshake with a peer.", promtext.Gauge, "peer")
	descRx         = promtext.NewDesc("mesh_peer_rx_bytes_total", "Bytes received from a peer over the data plane.", promtext.Counter, "peer")
	descTx         = promtext.NewDesc("mesh_peer_tx_bytes_total", "Bytes sent to a peer over the data plane.", promtext.Counter, "peer")
	descIPAM       = promtext.NewDesc("mesh_ipam_addresses", "Addresses of this node by kind: owned, allocated, free.", promtext.Gauge, "kind")
	descBlocked    = promtext.NewDesc("mesh_ipam_blocked", "1 for the kind of wait that currently stops this node's IPAM (see mesh status ipam), 0 for the others.", promtext.Gauge, "reason")
	descRejected   = promtext.NewDesc("mesh_ipam_rejected_total", "Remote IPAM input refused by a bound (docs/ipam.md), by reason; only a peer holding the mesh key can send it.", promtext.Counter, "reason")
	descIdRefused  = promtext.NewDesc("mesh_identity_refused_total", "Alive messages and metadata of other nodes refused by the name binding (docs/architecture.md, Trust and keys), by reason.", promtext.Counter, "reason")
	descIPAM6      = promtext.NewDesc("mesh_ipam6_addresses", "Addresses of this node's IPv6 range (dual-stack) by kind: owned, allocated, free (at most 2^63 each).", promtext.Gauge, "kind")
	descStateBytes = promtext.NewDesc("mesh_ipam_state_bytes", "Size of this node's whole IPAM state as last sent; a peer refuses one over 1 MiB (docs/ipam.md, Bounds on what a peer may claim).", promtext.Gauge)
	descTombstones = promtext.NewDesc("mesh_ipam_tombstones", "Removed peers this node's IPAM state carries, about 120 bytes each; each is dropped once every peer has acknowledged it (docs/ipam.md, Dropping tombstones).", promtext.Gauge)
	descDropped    = promtext.NewDesc("mesh_ipam_tombstones_dropped_total", "Tombstones of removed peers this node dropped since it started, once every peer had acknowledged them.", promtext.Counter)
	descBlocked6   = promtext.NewDesc("mesh_ipam6_blocked", "1 for the kind of wait that currently stops this node's IPv6 IPAM (dual-stack), 0 for the others.", promtext.Gauge, "reason")
	descUnreach    = promtext.NewDesc("mesh_ipam_unreachable_owned_addresses", "Addresses of the cluster range owned by peers this node cannot reach.", promtext.Gauge)
	descRecErr     = promtext.NewDesc("mesh_reconcile_errors_total", "Data-plane reconciliations that failed.", promtext.Counter)
	descRecRuns    = promtext.NewDesc("mesh_reconcile_runs_total", "Data-plane reconciliations run.", promtext.Counter)
	descDenied     = promtext.NewDesc("mesh_policy_denied_packets_total", "Packets dropped on this node because of one NetworkPolicy.", promtext.Counter, "policy")
	descRecSeconds = promtext.NewDesc("mesh_reconcile_duration_seconds", "Duration of the last data-plane reconciliation.", promtext.Gauge)
	descIsoDropped = promtext.NewDesc("mesh_isolation_dropped_packets_total", "Packets dropped by port isolation (spoofed, ipv6, host-config, other) or the underlay source check (underlay-spoofed).", promtext.Counter, "reason")
	descPolRestore = promtext.NewDesc("mesh_policy_restores_total", "Times the NetworkPolicy table was found changed or deleted and restored.", promtext.Counter)
	descIsoRestore = promtext.NewDesc("mesh_isolation_restores_total", "Times the port-isolation tables were found changed or deleted and restored.", promtext.Counter)
)

// collector reads the daemon's state at scrape time, so metrics and status
// can never disagree.
type collector struct{ d *Daemon }

// collectIPAM reports one allocator's addresses and waits.
func (c *collector) collectIPAM(out *promtext.Set, st ipam.Status, owned uint64, addrs, blocked *promtext.Desc) {
	out.Add(addrs, float64(owned), "owned")
	out.Add(addrs, float64(st.Allocated), "allocated")
	out.Add(addrs, float64(st.Free), "free")
	for _, r := range ipam.BlockedReasons {
		v := 0.0
		if r == st.BlockedReason {
			v = 1
		}
		out.Add(blocked, v, r)
	}
}

func (c *collector) Collect(out *promtext.Set) {
	d := c.d
	peers := map[api.MemberState]int{}
	for _, s := range api.MemberStates {
		peers[s] = 0
	}
	for _, m := range d.members.Members() {
		peers[m.State]++
	}
	for s, n := range peers {
		out.Add(descPeers, float64(n), string(s))
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
	c.collectIPAM(out, st, owned, descIPAM, descBlocked)
	out.Add(descStateBytes, float64(st.StateBytes))
	out.Add(descTombstones, float64(st.Tombstones))
	out.Add(descDropped, float64(st.TombstonesDropped))
	if d.ipam6 != nil {
		st6 := d.ipam6.Status()
		var owned6 uint64
		for _, p := range st6.Peers {
			if p.Name == d.id.Name {
				owned6 = p.Owned
			}
		}
		c.collectIPAM(out, st6, owned6, descIPAM6, descBlocked6)
	}
	for _, r := range ipam.RejectReasons {
		out.Add(descRejected, float64(st.Rejected[r]), r)
	}
	idRefused := d.members.IdentityRefusals()
	for _, r := range mesh.RefusedReasons {
		out.Add(descIdRefused, float64(idRefused[r]), r)
	}
	for name, n := range d.policy.DeniedPackets() {
		out.Add(descDenied, float64(n), name)
	}
	out.Add(descPolRestore, float64(d.policy.Restores()))
	out.Add(descUnreach, float64(unreachable))
	if ctrs := d.isolationCounters(); ctrs != nil {
		for _, name := range isolation.Counters {
			out.Add(descIsoDropped, float64(ctrs[name]), name)
		}
		restores := d.isoRestores.Load()
		out.Add(descIsoRestore, float64(restores))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conns := map[api.ConnState]int{}
	for _, s := range api.ConnStates {
		conns[s] = 0
	}
	now := time.Now()
	relayed := 0
	cs, rc := d.connections(ctx)
	for _, cn := range cs {
		conns[cn.State]++
		if cn.Via != "" {
			relayed++
		}
		out.Add(descRx, float64(cn.RxBytes), cn.Peer)
		out.Add(descTx, float64(cn.TxBytes), cn.Peer)
		out.Add(descPeerRelay, float64(cn.RelayedBytes), cn.Peer)
		if t, err := time.Parse(time.RFC3339, cn.LastHandshake); err == nil {
			out.Add(descHandshake, now.Sub(t).Seconds(), cn.Peer)
		}
	}
	for s, n := range conns {
		out.Add(descConns, float64(n), string(s))
	}
	out.Add(descRelayed, float64(relayed))
	out.Add(descRelayBytes, float64(rc.Bytes))
	gr := d.members.RelayStats()
	for kind, v := range map[string]uint64{"sent": gr.Sent, "forwarded": gr.Forwarded, "dropped": gr.Dropped, "refused": gr.Refused} {
		out.Add(descGossipRly, float64(v), kind)
	}
	out.Add(descGossipExch, float64(gr.Exchanges))
	for kind, v := range d.members.MetaUpdates() {
		out.Add(descMetaUpd, float64(v), kind)
	}
	rs := d.rec.Counters()
	out.Add(descRelayChg, float64(rs.RelayChanges))
	out.Add(descRecErr, float64(rs.Errors))
	out.Add(descRecRuns, float64(rs.Runs()))
	out.Add(descRecSeconds, rs.LastDuration.Seconds())
}
