package fastdp

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshnet/mesh/crypto"
)

// wgDiff computes the wgctrl change that takes the device from cur to want,
// and whether there is any. It only names what differs, so that an unchanged
// peer keeps its session and an adopted device (after a daemon restart) is
// not disturbed.
//
// A peer's endpoint is rewritten only when the desired endpoint itself
// changed since prev (the last config applied by this process) or the peer
// is new to prev: WireGuard follows a peer that roams (NAT rebinding), and
// resetting the endpoint on every Set would undo that.
func wgDiff(cur *wgtypes.Device, want, prev *Config) (wgtypes.Config, bool) {
	var out wgtypes.Config
	changed := false
	if crypto.Key(cur.PrivateKey) != want.PrivateKey {
		k := wgtypes.Key(want.PrivateKey)
		out.PrivateKey = &k
		changed = true
	}
	if cur.ListenPort != want.ListenPort {
		port := want.ListenPort
		out.ListenPort = &port
		changed = true
	}

	prevEndpoint := map[crypto.Key]netip.AddrPort{}
	if prev != nil {
		for _, p := range prev.Peers {
			prevEndpoint[p.PublicKey] = p.Endpoint
		}
	}
	wanted := make(map[crypto.Key]bool, len(want.Peers))
	have := make(map[crypto.Key]*wgtypes.Peer, len(cur.Peers))
	for i := range cur.Peers {
		have[crypto.Key(cur.Peers[i].PublicKey)] = &cur.Peers[i]
	}

	for _, p := range want.Peers {
		wanted[p.PublicKey] = true
		c, ok := have[p.PublicKey]
		if !ok {
			out.Peers = append(out.Peers, newPeerConfig(p))
			changed = true
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), UpdateOnly: true}
		diff := false
		if crypto.Key(c.PresharedKey) != p.PresharedKey {
			k := wgtypes.Key(p.PresharedKey)
			pc.PresharedKey = &k
			diff = true
		}
		if c.PersistentKeepaliveInterval != p.Keepalive {
			ka := p.Keepalive
			pc.PersistentKeepaliveInterval = &ka
			diff = true
		}
		if p.Endpoint.IsValid() && addrPortOf(c.Endpoint) != unmapAddrPort(p.Endpoint) {
			if old, known := prevEndpoint[p.PublicKey]; !known || old != p.Endpoint {
				pc.Endpoint = net.UDPAddrFromAddrPort(unmapAddrPort(p.Endpoint))
				diff = true
			}
		}
		if !samePrefixes(c.AllowedIPs, p.AllowedIPs) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = ipNets(p.AllowedIPs)
			diff = true
		}
		if diff {
			out.Peers = append(out.Peers, pc)
			changed = true
		}
	}
	for _, c := range cur.Peers {
		if !wanted[crypto.Key(c.PublicKey)] {
			out.Peers = append(out.Peers, wgtypes.PeerConfig{PublicKey: c.PublicKey, Remove: true})
			changed = true
		}
	}
	return out, changed
}

// keepPeers drops from a change the removals of the peers in keep (see
// AdoptGrace) and reports how many it dropped and whether anything is left
// to configure.
func keepPeers(c wgtypes.Config, keep map[wgtypes.Key]bool) (_ wgtypes.Config, kept int, changed bool) {
	peers := make([]wgtypes.PeerConfig, 0, len(c.Peers))
	for _, p := range c.Peers {
		if p.Remove && keep[p.PublicKey] {
			kept++
			continue
		}
		peers = append(peers, p)
	}
	c.Peers = peers
	return c, kept, c.PrivateKey != nil || c.ListenPort != nil || len(c.Peers) > 0
}

// firstHandshakeStagger is how long the second of two nodes that configure
// each other waits before its first handshake (holdFirstKeepalives).
const firstHandshakeStagger = 100 * time.Millisecond

// holdFirstKeepalives adds the new peers of c for which self is the second
// to initiate (the larger public key) without their persistent keepalive,
// and reports how many. Setting a keepalive on a new peer makes WireGuard
// send a handshake initiation at once. Two nodes that learn of each other
// at the same moment (a node joining) would both initiate; each then
// answers the other's initiation, which discards its own, both responses
// are refused, and the first packet waits for the 5 s handshake retry
// (wireguard-go and the kernel alike; measured in bench part 7). With only
// the first initiating, its initiation either finds the other ready or,
// sent before the other had configured it, is dropped; the second's
// keepalive, set firstHandshakeStagger later (or by any Set before), then
// starts a handshake of its own that finds the first ready. Peers without
// a keepalive are left alone: they handshake on their first packet. The
// data plane does not apply it to a process's first configuration (see
// configureWireGuard).
func holdFirstKeepalives(c wgtypes.Config, self wgtypes.Key) (wgtypes.Config, int) {
	held := 0
	for i, p := range c.Peers {
		if p.Remove || p.UpdateOnly || p.PersistentKeepaliveInterval == nil || *p.PersistentKeepaliveInterval == 0 ||
			bytes.Compare(self[:], p.PublicKey[:]) <= 0 {
			continue
		}
		zero := time.Duration(0)
		c.Peers[i].PersistentKeepaliveInterval = &zero
		held++
	}
	return c, held
}

func newPeerConfig(p Peer) wgtypes.PeerConfig {
	psk := wgtypes.Key(p.PresharedKey)
	ka := p.Keepalive
	pc := wgtypes.PeerConfig{
		PublicKey:                   wgtypes.Key(p.PublicKey),
		PresharedKey:                &psk,
		PersistentKeepaliveInterval: &ka,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  ipNets(p.AllowedIPs),
	}
	if p.Endpoint.IsValid() {
		pc.Endpoint = net.UDPAddrFromAddrPort(unmapAddrPort(p.Endpoint))
	}
	return pc
}

// peerStats converts the device's view of its peers, sorted by public key.
func peerStats(d *wgtypes.Device) []PeerStats {
	out := make([]PeerStats, 0, len(d.Peers))
	for _, p := range d.Peers {
		out = append(out, PeerStats{
			PublicKey:     crypto.Key(p.PublicKey),
			Endpoint:      addrPortOf(p.Endpoint),
			LastHandshake: p.LastHandshakeTime,
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
		})
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return slices.Compare(a.PublicKey[:], b.PublicKey[:]) })
	// The zero time from an unset handshake is reported as such, not as 1970.
	for i := range out {
		if out[i].LastHandshake.Unix() == 0 {
			out[i].LastHandshake = time.Time{}
		}
	}
	return out
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func addrPortOf(u *net.UDPAddr) netip.AddrPort {
	if u == nil {
		return netip.AddrPort{}
	}
	return unmapAddrPort(u.AddrPort())
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	a = a.Unmap()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

func samePrefixes(have []net.IPNet, want []netip.Prefix) bool {
	if len(have) != len(want) {
		return false
	}
	set := make(map[netip.Prefix]bool, len(have))
	for _, n := range have {
		p, ok := prefixOf(n)
		if !ok {
			return false
		}
		set[p] = true
	}
	for _, p := range want {
		if !set[p.Masked()] {
			return false
		}
	}
	return len(set) == len(want)
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, *ipNet(p))
	}
	return out
}

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
