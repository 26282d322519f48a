package peer

import (
	"context"
	"fmt"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
)

// HandshakeFresh is how recent a handshake must be for a connection to
// count as established: WireGuard rekeys every 2 minutes while traffic or
// keepalives flow.
const HandshakeFresh = 3 * time.Minute

// ConnectGrace is how long a peer may go without a handshake, from when it
// was first configured, before it is reported failed rather than connecting.
const ConnectGrace = 90 * time.Second

// connState is the one rule that turns a peer's last handshake into a
// connection state: established while handshakes are fresh, connecting
// within the grace after the peer was configured, failed after it.
func connState(lastHandshake, since, now time.Time) api.ConnState {
	switch {
	case !lastHandshake.IsZero() && now.Sub(lastHandshake) < HandshakeFresh:
		return api.ConnEstablished
	case now.Sub(since) < ConnectGrace:
		return api.ConnConnecting
	default:
		return api.ConnFailed
	}
}

// Connections reports the data plane's peers as status shows them: by node
// name, with their state, traffic and AllowedIPs as of the last applied
// config. It blocks for the data plane's stats (bounded by ctx).
func (r *Reconciler) Connections(ctx context.Context, now time.Time) ([]api.Connection, error) {
	stats, err := r.dp.Stats(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to read the data plane's peers: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	allowed := map[crypto.Key][]string{}
	if r.last != nil {
		for _, p := range r.last.Peers {
			for _, a := range p.AllowedIPs {
				allowed[p.PublicKey] = append(allowed[p.PublicKey], a.String())
			}
		}
	}
	out := []api.Connection{}
	for _, s := range stats {
		since, ok := r.since[s.PublicKey]
		if !ok {
			since = now // in the device but not (yet) in a config we applied
		}
		name, ok := r.names[s.PublicKey]
		if !ok {
			name = s.PublicKey.String()
		}
		c := api.Connection{Peer: name, RxBytes: s.RxBytes, TxBytes: s.TxBytes, AllowedIPs: allowed[s.PublicKey],
			State: connState(s.LastHandshake, since, now)}
		if s.Endpoint.IsValid() {
			c.Endpoint = s.Endpoint.String()
		}
		c.Via, c.EndToEnd = r.via[name], r.e2e[name]
		if st, rtt := r.paths.State(name); st != "" {
			c.DirectPath = st
			if rtt > 0 {
				c.RTTMillis = float64(rtt.Microseconds()) / 1000
			}
		}
		if !s.LastHandshake.IsZero() {
			c.LastHandshake = s.LastHandshake.UTC().Format(time.RFC3339)
		}
		out = append(out, c)
	}
	return out, nil
}
