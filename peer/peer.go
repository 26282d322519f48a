// Package peer turns the mesh's membership and the IPAM ring into the
// desired data plane configuration, and applies it. Its inputs are plain
// types of its own; the daemon converts membership and IPAM state into them,
// so this package knows neither memberlist nor the ring.
package peer

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/fastdp"
)

// Node is one member of the mesh.
type Node struct {
	Name string
	// Addr is the node's underlay address; the zero value means unknown,
	// and the peer then gets no endpoint (it has to contact us first).
	Addr netip.Addr
	// DPPort is the node's WireGuard port; 0 means fastdp.DefaultListenPort.
	DPPort    int
	PublicKey crypto.Key
	State     api.MemberState
	// Secret is the mesh key this pair's WireGuard preshared key is
	// derived from: one that both ends hold (the daemon picks it from the
	// key IDs the node advertises). Nil means no preshared key.
	Secret *crypto.MasterKey
	// Since is when the node entered State; a dead node keeps its peer
	// until Since + Grace.
	Since time.Time
	// Probe is the node's probe address (its overlay IP, from its path
	// report); the zero value when it has none. While the node is relayed
	// its host prefix stays on the direct peer, so that probes keep testing
	// the direct path; only when it lies in the node's own ranges or held
	// addresses.
	Probe netip.Addr
	// E2E is the node's end-to-end address (from its path report), the
	// zero value when it has none (it runs no end-to-end device, or a
	// release without one). While the node is relayed and this node has
	// one too, their traffic goes end to end through the relay (Desired).
	E2E netip.Addr
}

// Grace is how long a node keeps the WireGuard peer of a node that gossip
// no longer vouches for. A daemon that restarts or crashes stops answering
// gossip without a goodbye, and the others declare it dead after
// memberlist's suspicion timeout; its data plane (a kernel link, or the
// next process) is back well within the grace, so its pods stay reachable.
// And a daemon that starts applies the nodes it remembers from its last
// run (Input.Remembered) for this long before gossip has rejoined, so that
// a view that is only empty because gossip has not caught up yet does not
// remove their peers. A node that leaves gracefully (left) goes at once.
const Grace = 30 * time.Second

// RangeOwner is one range of the IPAM ring and the name of its owner.
type RangeOwner struct {
	CIDR  netip.Prefix
	Owner string
}

// HeldAddr is an address that a node's pod (or its gateway) holds in space
// the ring gives to another node or to none: pods that stayed when the
// space under them moved (an automatic reclaim of a node that was only cut
// off, an rmpeer of a live node, a lost seeding clash). The IPAM keeps it
// from being handed out again; the data plane routes it to its holder.
type HeldAddr struct {
	Holder string
	Addr   netip.Addr
}

// Input is everything the desired data plane depends on.
type Input struct {
	Self   string
	Nodes  []Node
	Ranges []RangeOwner
	// Held lists the addresses held outside their holder's ranges (the
	// IPAM's HeldOutsideOwned); each becomes a host prefix routed to its
	// holder.
	Held         []HeldAddr
	PrivateKey   crypto.PrivateKey
	ListenPort   int
	MTU          int
	Keepalive    time.Duration
	ClusterRange netip.Prefix
	// OverlayIP is this node's address on its bridge; the zero value while
	// the node owns no range yet.
	OverlayIP  netip.Addr
	BridgeName string
	// ClusterRange6 is the IPv6 cluster range of a dual-stack mesh
	// (ClusterRange is then the IPv4 one), the zero value otherwise; Ranges
	// and Held may then hold IPv6 prefixes and addresses inside it.
	// OverlayIP6 is this node's IPv6 address on its bridge, the zero value
	// while it owns no IPv6 range yet.
	ClusterRange6 netip.Prefix
	OverlayIP6    netip.Addr
	// Now is the time the grace periods (Grace) are measured against. The
	// zero value means no grace: dead nodes go at once and Remembered is
	// ignored.
	Now time.Time
	// Remembered are the nodes that had a peer when the previous run of
	// this daemon last saved them. Each one that Nodes does not list
	// counts as alive while Now is before RememberedUntil; once gossip
	// lists it, gossip's state rules.
	Remembered      []Node
	RememberedUntil time.Time
	// Via maps a node whose direct path is down to the relay that carries
	// its ranges (Relays). The relay must itself get a peer; otherwise
	// the node stays direct.
	Via map[string]string
	// E2EAddr is this node's end-to-end address (docs/routing.md, "End
	// to end through relays"); the zero value relays hop by hop only.
	// InnerDevice names the end-to-end device ("" is fastdp's default).
	E2EAddr     netip.Addr
	InnerDevice string
}

// hasPeer is the one rule for which nodes get a WireGuard peer: alive and
// suspect ones (suspicion is often a gossip hiccup), dead ones within
// Grace of their death (a restart or crash of their daemon), never left
// ones.
func hasPeer(n Node, now time.Time) bool {
	switch n.State {
	case api.MemberAlive, api.MemberSuspect:
		return true
	case api.MemberDead:
		return !now.IsZero() && !n.Since.IsZero() && now.Before(n.Since.Add(Grace))
	}
	return false
}

// nodes checks in.Nodes and returns them with the remembered nodes that
// gossip does not list yet and are still within their grace, as alive.
func (in Input) nodes() ([]Node, error) {
	names := make(map[string]bool, len(in.Nodes))
	out := make([]Node, 0, len(in.Nodes)+len(in.Remembered))
	for _, n := range in.Nodes {
		if names[n.Name] {
			return nil, fmt.Errorf("invalid peer input: node %q listed twice", n.Name)
		}
		names[n.Name] = true
		switch n.State {
		case api.MemberAlive, api.MemberSuspect, api.MemberDead, api.MemberLeft:
		default:
			return nil, fmt.Errorf("invalid peer input: node %q has unknown state %q", n.Name, n.State)
		}
		out = append(out, n)
	}
	if in.Now.IsZero() || !in.Now.Before(in.RememberedUntil) {
		return out, nil
	}
	for _, n := range in.Remembered {
		if names[n.Name] || n.Name == in.Self {
			continue
		}
		names[n.Name] = true
		n.State = api.MemberAlive
		out = append(out, n)
	}
	return out, nil
}

// Kept returns the nodes other than self that get a WireGuard peer under
// in (gossip's nodes by hasPeer, and remembered ones in their grace), in
// the order of in.Nodes then in.Remembered. The daemon saves them, so that
// its next run can apply them before gossip has rejoined.
func Kept(in Input) ([]Node, error) {
	all, err := in.nodes()
	if err != nil {
		return nil, err
	}
	var out []Node
	for _, n := range all {
		if n.Name != in.Self && n.PublicKey != (crypto.Key{}) && hasPeer(n, in.Now) {
			out = append(out, n)
		}
	}
	return out, nil
}

// Desired computes the data plane config for in: one WireGuard peer per
// node other than self that hasPeer admits (alive, suspect, dead for less
// than Grace, or remembered from the last run and not yet seen by gossip),
// with the ranges it owns as AllowedIPs. Suspect nodes keep their entry
// because suspicion is often a gossip hiccup, and dropping the peer would
// cut its pods off for nothing; left nodes, and dead ones after the grace,
// are taken out, their ranges are unreachable until the IPAM hands them to
// someone else.
//
// Held addresses are routed to their holder as host prefixes (/32, /128
// for IPv6), which
// win over the owner's range by longest-prefix match in WireGuard and in
// the kernel: another node's go into its AllowedIPs (and, where they lie in
// a range this node owns, get a host route into WireGuard instead of the
// bridge); this node's own get a host route to the bridge. An address
// listed for two holders is routed to neither (by its range, as before),
// and a range prefix equal to a held host prefix gives way to it, as two
// WireGuard peers cannot share one allowed prefix.
//
// Nodes without a public key (not yet advertised) are skipped. Two live
// names with the same public key (a node that restarted under a new name
// while its old name is still suspect) become one peer: WireGuard cannot
// hold two peers with one key, and both names' ranges are that machine's.
// The entry of the better state (alive over suspect), then of the smaller
// name, gives the endpoint.
func Desired(in Input) (*fastdp.Config, error) {
	d, err := desired(in)
	return d.cfg, err
}

// desiredState is what desired computes.
type desiredState struct {
	cfg *fastdp.Config
	// via is which nodes are relayed, and through whom: in.Via less the
	// relays that have no peer.
	via map[string]string
	// own maps each node that gets a peer to its own ranges and held
	// addresses (not the ranges it carries as a relay): the sources of
	// the packets that come from it, for counting what this node relays
	// per peer.
	own map[string][]netip.Prefix
	// e2e is the relayed nodes whose traffic goes end to end.
	e2e map[string]bool
}

// desired is Desired that also returns which nodes it relays, and each
// node's own prefixes.
func desired(in Input) (desiredState, error) {
	fail := func(err error) (desiredState, error) { return desiredState{}, err }
	if in.Self == "" {
		return fail(errors.New("invalid peer input: self name is empty"))
	}
	if !in.ClusterRange.IsValid() {
		return fail(errors.New("invalid peer input: cluster range is not set"))
	}
	if r := in.ClusterRange6; r.IsValid() && (!r.Addr().Is6() || !in.ClusterRange.Addr().Is4()) {
		return fail(fmt.Errorf("invalid peer input: IPv6 cluster range %s beside %s: want IPv4 and IPv6", r, in.ClusterRange))
	}
	selfPub, err := in.PrivateKey.Public()
	if err != nil {
		return fail(fmt.Errorf("invalid peer input: %w", err))
	}

	owned := map[string][]netip.Prefix{}
	for _, r := range in.Ranges {
		if !r.CIDR.IsValid() {
			return fail(fmt.Errorf("invalid peer input: range of %q is not a valid prefix", r.Owner))
		}
		owned[r.Owner] = append(owned[r.Owner], r.CIDR.Masked())
	}

	held, err := heldHosts(in)
	if err != nil {
		return fail(err)
	}
	heldBy := map[string][]netip.Prefix{}
	for _, p := range slices.SortedFunc(maps.Keys(held), comparePrefix) {
		heldBy[held[p]] = append(heldBy[held[p]], p)
	}
	for name, rs := range owned {
		owned[name] = slices.DeleteFunc(rs, func(p netip.Prefix) bool { _, ok := held[p]; return ok })
	}

	type entry struct {
		node   Node
		ranges []netip.Prefix
	}
	byKey := map[crypto.Key]*entry{}
	nodes, err := in.nodes()
	if err != nil {
		return fail(err)
	}
	var peers []Node
	keyOf := map[string]crypto.Key{}
	for _, n := range nodes {
		if !hasPeer(n, in.Now) {
			continue
		}
		// Our own entry, or a stale one of ours under another name.
		if n.Name == in.Self || n.PublicKey == selfPub || n.PublicKey == (crypto.Key{}) {
			continue
		}
		peers = append(peers, n)
		keyOf[n.Name] = n.PublicKey
		e := byKey[n.PublicKey]
		if e == nil {
			byKey[n.PublicKey] = &entry{node: n}
			continue
		}
		if better(n, e.node) {
			e.node = n
		}
	}
	relayed := map[string]string{}
	own := make(map[string][]netip.Prefix, len(peers))
	var inner []innerPeer
	for _, n := range peers {
		rs := slices.Concat(owned[n.Name], heldBy[n.Name])
		own[n.Name] = sortPrefixes(rs)
		e := byKey[n.PublicKey]
		if relay, ok := keyOf[in.Via[n.Name]]; ok && relay != n.PublicKey {
			relayed[n.Name] = in.Via[n.Name]
			if host, ok := endToEnd(in, n, rs, held); ok {
				// End to end: the node's ranges stay on its own
				// entry and are routed into the inner device, but
				// for its probe address, which stays routed to that
				// entry so that probes keep testing the direct
				// path; the relay's entry carries the node's
				// end-to-end address only, so the relay can neither
				// read nor forge its pods' packets (docs/routing.md).
				e.ranges = append(e.ranges, slices.DeleteFunc(slices.Clone(rs), func(p netip.Prefix) bool { return p == host })...)
				byKey[relay].ranges = append(byKey[relay].ranges, host)
				ip := innerPeer{node: n, ranges: sortPrefixes(rs), addr: host}
				if a := n.Probe.Unmap(); a.IsValid() && inSpace(rs, a) {
					ip.probe = netip.PrefixFrom(a, a.BitLen())
				}
				inner = append(inner, ip)
				continue
			}
			// Relayed: the ranges go to the relay's peer, the probe
			// address stays on the direct one (docs/routing.md).
			// Only a probe address inside the node's own space: a
			// node must not pull another node's address onto its
			// entry by naming it as its probe address.
			var probe netip.Prefix
			if a := n.Probe.Unmap(); a.IsValid() && inSpace(rs, a) {
				probe = netip.PrefixFrom(a, a.BitLen())
				e.ranges = append(e.ranges, probe)
			}
			// Two peers cannot share one allowed prefix.
			rs = slices.DeleteFunc(rs, func(p netip.Prefix) bool { return p == probe })
			byKey[relay].ranges = append(byKey[relay].ranges, rs...)
			continue
		}
		e.ranges = append(e.ranges, rs...)
	}

	cfg := &fastdp.Config{
		PrivateKey:   in.PrivateKey.Bytes(),
		ListenPort:   in.ListenPort,
		MTU:          in.MTU,
		BridgeName:   in.BridgeName,
		LocalRanges:  sortPrefixes(owned[in.Self]),
		ClusterRange: in.ClusterRange.Masked(),
	}
	if in.OverlayIP.IsValid() {
		a := in.OverlayIP.Unmap()
		cfg.BridgeAddr = netip.PrefixFrom(a, a.BitLen())
	}
	if in.ClusterRange6.IsValid() {
		cfg.ClusterRange6 = in.ClusterRange6.Masked()
		if a := in.OverlayIP6; a.IsValid() {
			cfg.BridgeAddr6 = netip.PrefixFrom(a, a.BitLen())
		}
	}
	for _, p := range heldBy[in.Self] {
		// The bridge's own addresses need no route to the bridge.
		if p != cfg.BridgeAddr && p != cfg.BridgeAddr6 {
			cfg.LocalHosts = append(cfg.LocalHosts, p)
		}
	}
	for _, e := range byKey {
		for _, p := range e.ranges {
			if _, ok := held[p]; ok && slices.ContainsFunc(cfg.LocalRanges, func(r netip.Prefix) bool { return r.Contains(p.Addr()) }) {
				cfg.RemoteHosts = append(cfg.RemoteHosts, p)
			}
		}
	}
	cfg.LocalHosts = sortPrefixes(cfg.LocalHosts)
	cfg.RemoteHosts = sortPrefixes(cfg.RemoteHosts)
	for key, e := range byKey {
		p := fastdp.Peer{
			PublicKey:  key,
			AllowedIPs: sortPrefixes(e.ranges),
			Keepalive:  in.Keepalive,
		}
		if e.node.Addr.IsValid() {
			port := e.node.DPPort
			if port == 0 {
				port = fastdp.DefaultListenPort
			}
			p.Endpoint = netip.AddrPortFrom(e.node.Addr.Unmap(), uint16(port))
		}
		if e.node.Secret != nil {
			p.PresharedKey = e.node.Secret.PresharedKey(selfPub, key)
		}
		cfg.Peers = append(cfg.Peers, p)
	}
	slices.SortFunc(cfg.Peers, func(a, b fastdp.Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	e2e := innerConfig(in, cfg, inner)
	return desiredState{cfg: cfg, via: relayed, own: own, e2e: e2e}, nil
}

// innerPeer is a relayed node whose traffic goes end to end.
type innerPeer struct {
	node   Node
	ranges []netip.Prefix
	addr   netip.Prefix // its end-to-end address
	probe  netip.Prefix // its probe address in its own space, if any
}

// endToEnd says whether the relayed node n's traffic goes end to end, and
// returns its end-to-end address as a host prefix: when both this node
// and n have an end-to-end address, n's lies in n's own space rs (a node
// must not pull another's address onto the relay's entry) and is none of
// another node's held addresses, and differs from this node's own and
// from n's probe address (which stays on n's direct entry).
func endToEnd(in Input, n Node, rs []netip.Prefix, held map[netip.Prefix]string) (netip.Prefix, bool) {
	self, a := in.E2EAddr.Unmap(), n.E2E.Unmap()
	if !self.IsValid() || !a.IsValid() || a == self || a == n.Probe.Unmap() || !inSpace(rs, a) {
		return netip.Prefix{}, false
	}
	host := netip.PrefixFrom(a, a.BitLen())
	if h, ok := held[host]; ok && h != n.Name {
		return netip.Prefix{}, false
	}
	return host, true
}

// innerConfig adds the end-to-end device to cfg when some relayed node's
// traffic goes end to end, and returns those nodes' names. Its peers use
// the nodes' keys and preshared keys, as their outer entries do.
func innerConfig(in Input, cfg *fastdp.Config, inner []innerPeer) map[string]bool {
	if len(inner) == 0 {
		return nil
	}
	self := in.E2EAddr.Unmap()
	ic := &fastdp.Inner{DeviceName: in.InnerDevice, Addr: netip.PrefixFrom(self, self.BitLen())}
	names := make(map[string]bool, len(inner))
	at := map[crypto.Key]int{}
	psk := map[crypto.Key]crypto.Key{}
	for _, p := range cfg.Peers {
		psk[p.PublicKey] = p.PresharedKey
	}
	for _, ip := range inner {
		names[ip.node.Name] = true
		ic.Routes = append(ic.Routes, ip.ranges...)
		ic.Pins = append(ic.Pins, ip.addr)
		if ip.probe.IsValid() {
			// Probes test the direct path, not the relay's.
			ic.Direct = append(ic.Direct, ip.probe)
		}
		if i, ok := at[ip.node.PublicKey]; ok {
			// Two names of one machine: one peer (see Desired).
			ic.Peers[i].AllowedIPs = sortPrefixes(slices.Concat(ic.Peers[i].AllowedIPs, ip.ranges))
			continue
		}
		at[ip.node.PublicKey] = len(ic.Peers)
		ic.Peers = append(ic.Peers, fastdp.Peer{
			PublicKey:    ip.node.PublicKey,
			PresharedKey: psk[ip.node.PublicKey],
			Endpoint:     netip.AddrPortFrom(ip.addr.Addr(), fastdp.DefaultInnerListenPort),
			AllowedIPs:   ip.ranges,
			// A keepalive, as on the outer entry: it starts the
			// handshake as soon as the entry is configured (fastdp
			// staggers the two ends), not at the first packet.
			Keepalive: in.Keepalive,
		})
	}
	slices.SortFunc(ic.Peers, func(a, b fastdp.Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	ic.Routes, ic.Pins, ic.Direct = sortPrefixes(ic.Routes), sortPrefixes(ic.Pins), sortPrefixes(ic.Direct)
	cfg.Inner = ic
	return names
}

// inSpace says whether a lies in one of ps.
func inSpace(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// better reports whether a should give the endpoint over b: alive over
// suspect over dead, then the smaller name.
func better(a, b Node) bool {
	if ra, rb := stateRank(a.State), stateRank(b.State); ra != rb {
		return ra < rb
	}
	return a.Name < b.Name
}

func stateRank(s api.MemberState) int {
	switch s {
	case api.MemberAlive:
		return 0
	case api.MemberSuspect:
		return 1
	}
	return 2
}

// heldHosts maps the host prefix of each held address to its holder,
// leaving out addresses listed for two holders.
func heldHosts(in Input) (map[netip.Prefix]string, error) {
	held := make(map[netip.Prefix]string, len(in.Held))
	contested := map[netip.Prefix]bool{}
	for _, h := range in.Held {
		a := h.Addr.Unmap()
		if !a.IsValid() || !(in.ClusterRange.Contains(a) || in.ClusterRange6.Contains(a)) {
			return nil, fmt.Errorf("invalid peer input: address %s held by %q is outside the cluster range %s", h.Addr, h.Holder, ipRanges(in))
		}
		if h.Holder == "" {
			return nil, fmt.Errorf("invalid peer input: address %s is held by an empty name", a)
		}
		p := netip.PrefixFrom(a, a.BitLen())
		if prev, ok := held[p]; ok && prev != h.Holder {
			contested[p] = true
		}
		held[p] = h.Holder
	}
	for p := range contested {
		delete(held, p)
	}
	return held, nil
}

// ipRanges names the cluster ranges of in, for messages.
func ipRanges(in Input) string {
	if in.ClusterRange6.IsValid() {
		return in.ClusterRange.String() + " or " + in.ClusterRange6.String()
	}
	return in.ClusterRange.String()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// sortPrefixes returns ps sorted by address then length, without duplicates.
func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return nil
	}
	out := slices.Clone(ps)
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}
