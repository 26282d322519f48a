package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/control"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/fastdp/relayed"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// backend is what the control API serves from: the daemon's parts behind
// the control package's interfaces.
func (d *Daemon) backend() control.Backend {
	return control.Backend{Status: d, Peers: peersAPI{d}, IPAM: ipamAPI{d}, Keys: keysAPI{d}, Attachments: attachAPI{d}, Lifecycle: lifecycleAPI{d}, Identities: identitiesAPI{d}}
}

// peersAPI is control.Peers: the gossip targets.
type peersAPI struct{ d *Daemon }

func (p peersAPI) Connect(address string) error {
	addr, err := mesh.ParsePeerAddress(address, p.d.cfg.Port)
	if err != nil {
		return control.Mark(control.ErrInvalid, err)
	}
	p.d.members.Connect(addr)
	p.d.log.Info("added peer target", "peer", addr)
	return nil
}

func (p peersAPI) Forget(address string) error {
	addr, err := mesh.ParsePeerAddress(address, p.d.cfg.Port)
	if err != nil {
		return control.Mark(control.ErrInvalid, err)
	}
	if !p.d.members.Forget(addr) {
		return fmt.Errorf("%w: %s is neither a target nor a remembered peer", control.ErrNotFound, addr)
	}
	p.d.log.Info("forgot peer", "peer", addr)
	return nil
}

// Status assembles the status contract from every part of the daemon. It
// may wait for the data plane's statistics until ctx ends.
func (d *Daemon) Status(ctx context.Context) *api.Status {
	st := &api.Status{Name: d.id.Name, PeerID: d.id.PeerID, Version: d.cfg.Version, Peers: []api.Peer{}, Targets: []api.Target{}}
	for _, m := range d.members.Members() {
		st.Peers = append(st.Peers, api.Peer{Name: m.Name, PeerID: m.Meta.PeerID, Address: m.Addr.String(), State: m.State, Self: m.Self, KeyIDs: m.Meta.Keys, Identity: m.Identity, PublicAddress: publicAddress(m.Meta), PublicPort: publicPort(m.Meta)})
	}
	for _, t := range d.members.Targets() {
		at := api.Target{Address: t.Address, Source: t.Source, State: t.State, Error: t.Error}
		if !t.NextRetry.IsZero() {
			at.NextRetry = t.NextRetry.UTC().Format(time.RFC3339)
		}
		st.Targets = append(st.Targets, at)
	}
	st.KeyIDs, st.GossipKeyID = d.keys.status()
	_, meta := d.self.get()
	st.PublicKey = meta.PublicKey
	st.IPAM, st.OverlayIP = d.ipamStatus()
	st.IPAM6, st.OverlayIP6 = d.ipamStatus6()
	st.Policies = d.policyStatus()
	st.Dataplane = d.dp.Kind()
	st.DataplaneProcess = d.dataplaneProcessStatus()
	st.MTU = d.mtu
	var rc relayed.Counts
	st.Connections, rc = d.connections(ctx)
	if err := d.cniErr.get(); err != nil && !d.cniDone.Load() {
		st.Problems = append(st.Problems, "CNI plugin not installed: "+err.Error())
	}
	if err := d.natErr.get(); err != nil {
		st.Problems = append(st.Problems, "NAT: "+err.Error())
	}
	st.RelayedBytes = int64(rc.Bytes)
	rs := d.members.RelayStats()
	reach := d.members.Reachability()
	st.GossipRelay = &api.GossipRelay{Sent: rs.Sent, Forwarded: rs.Forwarded, Dropped: rs.Dropped, Refused: rs.Refused, Exchanges: rs.Exchanges, Home: d.members.Home(), Attached: d.members.Attached(),
		Reachability: reach.State, CheckedBy: reach.Peer, SeenAs: reach.Observed, ReachabilityError: reach.Err}
	st.GossipRelay.NATPort, st.GossipRelay.PublicPort = d.natPorts.status(reach.State.BehindNAT(), d.cfg.DPPort)
	if err := d.relayedErr.get(); err != nil {
		st.Problems = append(st.Problems, "relayed-traffic counter: "+err.Error())
	}
	if err := d.isoErr.get(); err != nil {
		st.Problems = append(st.Problems, "port isolation: "+err.Error())
	}
	if after := d.rec.Paths().Silence(time.Now()); after > peer.PathDownAfter {
		st.Problems = append(st.Problems, fmt.Sprintf("direct paths answer slowly: a path counts as down only after %v without an answer rather than %v (%d times their median round trip; a host too loaded to run its data plane in time, docs/routing.md, \"The signal\")",
			after.Round(time.Second), peer.PathDownAfter, peer.PathSlowFactor))
	}
	if err := d.rec.Counters().LastError; err != nil {
		st.Problems = append(st.Problems, "data plane: "+err.Error())
	}
	for _, p := range d.members.IdentityProblems() {
		st.Problems = append(st.Problems, "identity: "+p)
	}
	if d.members.BehindNAT() && st.GossipRelay.Home == "" {
		st.Problems = append(st.Problems, "behind NAT ("+string(reach.State)+") and attached to no member: the others cannot reach this node's gossip; check that a peer named at launch runs this release and is reachable on TCP 6783 (docs/routing.md, \"Nodes behind NAT\")")
	}
	return st
}

// identitiesAPI is control.Identities: the name bindings of the membership.
type identitiesAPI struct{ d *Daemon }

func (i identitiesAPI) ForgetIdentity(name string) (bool, error) {
	if name == i.d.id.Name {
		return false, control.Mark(control.ErrInvalid, fmt.Errorf("refusing to forget the identity of this node's own name %q", name))
	}
	return i.d.members.ForgetIdentity(name)
}

// dataplaneProcessStatus is the mesh-dataplane process's state, nil when
// wireguard-go does not run in one.
func (d *Daemon) dataplaneProcessStatus() *api.DataplaneProcess {
	s, ok := d.dp.(interface {
		ProcessStatus() (fastdp.ProcessStatus, bool)
	})
	if !ok {
		return nil
	}
	ps, ok := s.ProcessStatus()
	if !ok {
		return nil
	}
	state := api.DataplaneProcessDown
	if ps.Up {
		state = api.DataplaneProcessUp
	}
	return &api.DataplaneProcess{Mode: ps.Mode, State: state, PID: ps.PID, Restarts: ps.Restarts}
}

// publicAddress is the public address a member behind NAT announces, as
// status shows it: only one that parses, so that a member cannot put
// arbitrary text into others' status.
// publicPort is the port a node behind NAT announces for its data plane,
// with its public address only (dataEndpoint's rule); 0 otherwise.
func publicPort(m mesh.Meta) int {
	if publicAddress(m) == "" || m.PublicPort < 1 || m.PublicPort > 65535 {
		return 0
	}
	return m.PublicPort
}

func publicAddress(m mesh.Meta) string {
	a, err := netip.ParseAddr(m.PublicAddr)
	if err != nil {
		return ""
	}
	return a.String()
}
