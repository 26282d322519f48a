// Command hostile plays a peer that holds the mesh key and lies: it joins
// the gossip like a node, then floods the IPAM channel with forged and
// oversized states (e2e's TestHostilePeer). It needs MESH_PASSWORD and
// MESH_NAME in its environment, like a daemon, and talks only to the
// simulated hosts of the test.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"
)

func main() {
	name := flag.String("name", "evil", "the forger's own node name")
	addr := flag.String("addr", "", "address to advertise")
	peer := flag.String("peer", "", "honest node to join, host:port")
	victim := flag.String("victim", "", "live honest node whose name and range are attacked")
	other := flag.String("other", "", "another live honest node")
	duration := flag.Duration("duration", 20*time.Second, "how long to flood")
	keyFile := flag.String("key-file", "", "the mesh key file (else MESH_PASSWORD and MESH_NAME)")
	deltas := flag.Bool("deltas", false, "say it reads IPAM deltas (so the honest nodes send them), and send the forged ring changes as deltas too")
	flag.Parse()
	if err := run(*name, *addr, *peer, *victim, *other, *keyFile, *duration, *deltas); err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
}

// capture keeps the first and the latest honest state merged from a peer.
type capture struct {
	mu            sync.Mutex
	first, latest []byte
	forged        []byte // what push/pull answers with
}

func (c *capture) LocalState(bool) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.forged
}

func (c *capture) MergeRemoteState(b []byte) error {
	if _, err := ipam.DecodeWire(b); err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first == nil {
		c.first = slices.Clone(b)
	}
	c.latest = slices.Clone(b)
	return nil
}

func (c *capture) HandleMessage(_ string, msg []byte) error {
	// Whole states only: a delta is part of one.
	if len(msg) > 1 && msg[0] == 1 {
		return c.MergeRemoteState(msg[1:])
	}
	return nil
}

func run(name, addr, peer, victim, other, keyFile string, duration time.Duration, deltas bool) error {
	key, err := meshKey(keyFile)
	if err != nil {
		return err
	}
	wg, err := crypto.GeneratePrivateKey()
	if err != nil {
		return err
	}
	pub, err := wg.Public()
	if err != nil {
		return err
	}
	cfg := mesh.DefaultConfig()
	cfg.Name = name
	cfg.AdvertiseAddr = netip.MustParseAddr(addr)
	cfg.BindAddr = cfg.AdvertiseAddr
	cfg.GossipKey = key.GossipKey()
	cfg.Meta = mesh.Meta{PeerID: "hostile-" + name, Version: "hostile", PublicKey: pub.String(), DPPort: 6784, Keys: []string{key.ID()}}
	if deltas {
		cfg.Meta.IPAMDeltas = mesh.IPAMDeltasVersion
	}
	cfg.Targets = []string{peer}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := mesh.New(cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	c := &capture{}
	send, err := m.Register(mesh.ChannelIPAM, c)
	if err != nil {
		return err
	}
	m.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c.mu.Lock()
		got := c.latest != nil
		c.mu.Unlock()
		if got {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no IPAM state from %s within 30 s", peer)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Println("joined; flooding for", duration)
	sent := map[string]int{}
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		c.mu.Lock()
		latest, first := c.latest, c.first
		c.mu.Unlock()
		w, err := ipam.DecodeWire(latest)
		if err != nil {
			return err
		}
		for _, a := range attacks(w, first, name, victim, other, deltas) {
			c.mu.Lock()
			if len(a.msg) > 1 {
				c.forged = a.msg[1:]
			}
			c.mu.Unlock()
			if a.reliable {
				for _, mem := range m.Members() {
					if !mem.Self && mem.State.Live() {
						_ = send.SendTo(mem.Name, a.msg)
					}
				}
			} else {
				send.Broadcast(a.msg)
			}
			sent[a.name]++
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("sent", sent)
	return nil
}

// meshKey is the key a daemon given the same key file or environment holds.
func meshKey(keyFile string) (*crypto.MasterKey, error) {
	if keyFile == "" {
		return crypto.PasswordKey([]byte(os.Getenv("MESH_PASSWORD")), os.Getenv("MESH_NAME"))
	}
	data, err := identity.ReadSecretFile(keyFile)
	if err != nil {
		return nil, err
	}
	raws, err := crypto.ParseKeyFile(data)
	if err != nil {
		return nil, err
	}
	return crypto.KeyFileKey(raws[0]), nil
}

var (
	wholeOnce sync.Once
	whole     []byte
)

type attack struct {
	name     string
	msg      []byte
	reliable bool // sent to each member over TCP, not broadcast
}

// attacks forges one message of each kind from the latest honest state w;
// with deltas, the ring changes also as deltas (message type 8), sent to
// each member, which merges them as it merges a state.
func attacks(w ipam.Wire, first []byte, self, victim, other string, deltas bool) []attack {
	now := uint64(time.Now().UnixMilli())
	size := uint64(1) << (32 - w.Prefix.Bits())
	var out []attack
	add := func(name string, f func(w *ipam.Wire)) {
		c := clone(w)
		c.Sender = self
		f(&c)
		out = append(out, attack{name: name, msg: c.Message()})
	}
	// A live peer removed at the maximum epoch and version, its range
	// given to the forger at the maximum version.
	add("max-epoch", func(c *ipam.Wire) {
		v := c.Peers[victim]
		c.Peers[victim] = ipam.WirePeer{Epoch: math.MaxUint64, Version: math.MaxUint64, ID: v.ID, Removed: true}
		takeRange(c, victim, self, func(uint64) uint64 { return math.MaxUint64 })
	})
	// Another peer's range, far beyond one transfer's step.
	add("range-jump", func(c *ipam.Wire) {
		takeRange(c, victim, self, func(v uint64) uint64 { return v + 1<<30 })
	})
	// A claim under a live node's name: the victim "holds" the other
	// node's space, and publishes from two hours ahead.
	add("live-name", func(c *ipam.Wire) {
		v := c.Peers[victim]
		v.Version = now + uint64(2*time.Hour/time.Millisecond)
		v.Held = spanOffsets(*c, other, 2000)
		c.Peers[victim] = v
	})
	// Claims under a live node's name within every bound, which only the
	// signatures of peer infos stop: the victim holds a few addresses of
	// the other node's space, unsigned, then with a forged signature; and
	// the victim removed by the forger (as rmpeer writes it), signed by
	// the forger, whose name is bound to no identity.
	// A second ahead, so that even the victim's own info is older; sent
	// over TCP to each member (reliable), as memberlist's UDP gossip
	// queue, flooded with the other attacks, sends the largest first
	// and would starve these small ones.
	claim := func(c *ipam.Wire) ipam.WirePeer {
		v := c.Peers[victim]
		v.Version = now + 1000
		v.Held = spanOffsets(*c, other, 8)
		v.Writer, v.Sig = "", nil
		return v
	}
	reliable := func(name string, f func(w *ipam.Wire)) {
		add(name, f)
		out[len(out)-1].reliable = true
	}
	reliable("live-name-unsigned", func(c *ipam.Wire) {
		c.Peers[victim] = claim(c)
	})
	reliable("live-name-forged-signature", func(c *ipam.Wire) {
		v := claim(c)
		v.Writer, v.Sig = victim, randomSig()
		c.Peers[victim] = v
	})
	reliable("rmpeer-forged", func(c *ipam.Wire) {
		v := c.Peers[victim]
		c.Peers[victim] = ipam.WirePeer{Epoch: v.Epoch + 1, Version: now + 1000, ID: v.ID, Removed: true, Writer: self, Sig: randomSig()}
	})
	// The victim's range given to the forger one version ahead, as a
	// donation writes it, and tombstoned one version ahead, as an rmpeer
	// writes it: within every bound, stopped only by the rule that a
	// transfer needs its previous owner's release (the victim's signed
	// info lists its space).
	reliable("transfer-unreleased", func(c *ipam.Wire) {
		takeRange(c, victim, self, func(v uint64) uint64 { return v + 1 })
	})
	reliable("tombstone-unreleased", func(c *ipam.Wire) {
		for i, s := range c.Ring {
			if s.Owner == victim && s.Dead == "" {
				c.Ring[i] = ipam.WireSeg{Start: s.Start, Version: s.Version + 1, Dead: victim}
			}
		}
	})
	// The forger holds 2000 addresses of the victim's space.
	add("foreign-held", func(c *ipam.Wire) {
		c.Peers[self] = ipam.WirePeer{Version: now, ID: "hostile", Held: spanOffsets(*c, victim, 2000)}
	})
	// Thousands of invented peer names.
	add("fake-names", func(c *ipam.Wire) {
		for i := range 5000 {
			c.Peers[fmt.Sprintf("fake-%05d", i)] = ipam.WirePeer{Version: now, ID: "fake"}
		}
	})
	// A whole-range Held list: more than a megabyte on a /12. Built once:
	// it is refused unread, whatever the rest says.
	wholeOnce.Do(func() {
		c := clone(w)
		c.Sender = self
		held := make([]uint64, size)
		for i := range held {
			held[i] = uint64(i)
		}
		c.Peers[self] = ipam.WirePeer{Version: now, ID: "hostile", Held: held}
		whole = c.Message()
	})
	out = append(out, attack{name: "whole-range-held", msg: whole})
	// A replayed old state, as it was first captured.
	out = append(out, attack{name: "replay", msg: append([]byte{1}, first...)})
	if deltas {
		for _, a := range slices.Clone(out) {
			if a.name != "max-epoch" && a.name != "range-jump" && a.name != "transfer-unreleased" {
				continue
			}
			msg := slices.Clone(a.msg)
			msg[0] = msgDelta
			out = append(out, attack{name: a.name + "-delta", msg: msg, reliable: true})
		}
	}
	return out
}

// msgDelta is the IPAM's message type of a delta (ipam/delta.go).
const msgDelta = 8

// randomSig is 64 bytes no identity signed.
func randomSig() []byte {
	b := make([]byte, 64)
	_, _ = rand.Read(b)
	return b
}

func clone(w ipam.Wire) ipam.Wire {
	c := w
	c.Ring = slices.Clone(w.Ring)
	c.Peers = make(map[string]ipam.WirePeer, len(w.Peers))
	for k, v := range w.Peers {
		v.Held = slices.Clone(v.Held)
		c.Peers[k] = v
	}
	return c
}

// takeRange gives every segment of from to to, at the version f returns.
func takeRange(c *ipam.Wire, from, to string, f func(uint64) uint64) {
	for i, s := range c.Ring {
		if s.Owner == from {
			c.Ring[i] = ipam.WireSeg{Start: s.Start, Version: f(s.Version), Owner: to}
		}
	}
}

// spanOffsets returns up to n offsets of the space name owns.
func spanOffsets(c ipam.Wire, name string, n int) []uint64 {
	size := uint64(1) << (32 - c.Prefix.Bits())
	var out []uint64
	for i, s := range c.Ring {
		if s.Owner != name || s.Dead != "" {
			continue
		}
		end := size
		if i+1 < len(c.Ring) {
			end = c.Ring[i+1].Start
		}
		for off := s.Start; off < end && len(out) < n; off++ {
			out = append(out, off)
		}
	}
	return out
}
