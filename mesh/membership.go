// Package mesh is the membership layer: which nodes are in the mesh, how to
// reach them, and a gossip transport that other parts of the daemon (the IPAM)
// use through named channels without this package knowing what they carry.
package mesh

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/meshnet/mesh/api"
)

// Member is one node as this node sees it.
type Member struct {
	Name    string
	Addr    netip.AddrPort
	State   api.MemberState
	Self    bool
	Meta    Meta
	MetaErr error
	// Identity is the start of the member's signing public key, empty
	// when its metadata is unsigned (a node of the previous release).
	Identity string
	// Since is when this node last saw State change.
	Since time.Time
}

// Membership runs memberlist for this node. Its methods are safe for
// concurrent use. Close (or Leave then Close) must be called to stop it.
type Membership struct {
	cfg      Config
	log      *slog.Logger
	list     *memberlist.Memberlist
	delegate *delegate
	keyring  *memberlist.Keyring // nil without encryption
	relay    *relayTransport
	bindings *bindings

	mu      sync.Mutex
	members map[string]*Member // every node ever seen since start, dead ones too
	byeFrom map[string]bool    // nodes that announced a graceful leave
	subs    []chan struct{}
	// updates counts the metadata changes of other members received, by
	// what changed (MetaUpdates).
	updates metaUpdates

	channels channels
	targets  *targets
	// metaMu serialises UpdateMeta; lastMeta is what it was last given,
	// announced again when this node's home changes (nathome.go).
	metaMu    sync.Mutex
	lastMeta  Meta
	closeOnce sync.Once
	stopOnce  sync.Once
	startOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

// New starts memberlist on the configured port, so that peers can join this
// node; Start begins joining the targets.
func New(cfg Config) (*Membership, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Name == "" {
		return nil, errors.New("node name is empty")
	}
	cfg.Meta = cfg.Meta.withRelayFields(cfg.GossipKey != nil)
	metaBytes, err := cfg.Meta.Encode()
	if err != nil {
		return nil, err
	}
	// With the advertised address given, the signature is made before
	// Create, so even the first alive message is signed: peers that know
	// this node (a restart) refuse unsigned metadata for its name.
	preSigned := netip.AddrPort{}
	if cfg.SigningKey != nil && cfg.AdvertiseAddr.IsValid() {
		preSigned = netip.AddrPortFrom(cfg.AdvertiseAddr, uint16(cfg.Port))
		if metaBytes, err = SignMeta(cfg.Meta, cfg.SigningKey, cfg.Name, preSigned); err != nil {
			return nil, err
		}
	}
	bind, err := newBindings(cfg.BindingsFile, cfg.Name, cfg.Logger)
	if err != nil {
		return nil, err
	}
	m := &Membership{
		bindings: bind,
		cfg:      cfg,
		log:      cfg.Logger,
		lastMeta: cfg.Meta,
		members:  make(map[string]*Member),
		byeFrom:  make(map[string]bool),
		done:     make(chan struct{}),
	}
	m.channels.init(m)

	mc := memberlist.DefaultLANConfig()
	if err := applyTiming(mc, cfg.Timing); err != nil {
		return nil, err
	}
	mc.Name = cfg.Name
	mc.BindPort = cfg.Port
	mc.AdvertisePort = cfg.Port
	if cfg.BindAddr.IsValid() {
		mc.BindAddr = cfg.BindAddr.String()
	}
	if cfg.AdvertiseAddr.IsValid() {
		mc.AdvertiseAddr = cfg.AdvertiseAddr.String()
	}
	mc.Label = cfg.Label
	if cfg.GossipKey != nil {
		kr, err := memberlist.NewKeyring(cfg.SecondaryGossipKeys, cfg.GossipKey)
		if err != nil {
			return nil, fmt.Errorf("failed to create gossip keyring: %w", err)
		}
		mc.Keyring = kr
		m.keyring = kr
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	m.delegate = &delegate{m: m, meta: metaBytes}
	mc.Delegate = m.delegate
	ev := &events{m: m}
	mc.Events = ev
	mc.Alive = bind
	mc.Ping = ev
	mc.Logger = log.New(logWriter{log: m.log.With("component", "memberlist"), suspect: m.suspected}, "", 0)
	// Our own transport around memberlist's, so that gossip for members
	// reachable only through others is relayed (relay.go).
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{mc.BindAddr},
		BindPort:  mc.BindPort,
		Logger:    mc.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("failed to start gossip on port %d: %w", cfg.Port, err)
	}
	if mc.BindPort == 0 {
		mc.BindPort = nt.GetAutoBindPort()
		mc.AdvertisePort = mc.BindPort
	}
	m.relay = newRelayTransport(nt, cfg.Name, m.log.With("component", "gossip-relay"), relayOptions{
		keyring:  m.keyring,
		signKey:  cfg.SigningKey,
		boundKey: bind.boundKey,
		tap:      cfg.tap,
	})
	mc.Transport = m.relay
	// Dead nodes stay in memberlist's list long enough for a restarted peer
	// to be recognised; our own map keeps them for status beyond that.
	mc.DeadNodeReclaimTime = 10 * time.Second
	mc.PushPullInterval = cfg.PushPullInterval
	if mc.PushPullInterval <= 0 {
		mc.PushPullInterval = DefaultPushPullInterval
	}
	if cfg.probeInterval > 0 {
		mc.ProbeInterval = cfg.probeInterval
	}

	// The targets exist before memberlist does: Create starts listening,
	// and a peer's state exchange can report joins (observe, which tells
	// the targets) before Create has even returned.
	m.targets = newTargets(m, cfg)
	list, err := memberlist.Create(mc)
	if err != nil {
		m.relay.Shutdown()
		return nil, fmt.Errorf("failed to start gossip on port %d: %w", cfg.Port, err)
	}
	m.list = list
	m.relay.setOrigin(m.LocalAddr().String())
	// The signature covers the advertised address, which memberlist picks
	// in Create when none is given: the first alive message (unsigned) is
	// then replaced at once by a signed one of a higher incarnation.
	if cfg.SigningKey != nil && m.LocalAddr() != preSigned {
		if err := m.UpdateMeta(cfg.Meta); err != nil {
			list.Shutdown()
			return nil, err
		}
	}
	self := list.LocalNode()
	m.members[self.Name] = memberFromNode(self, true)
	m.members[self.Name].Since = time.Now()

	return m, nil
}

// IsMember says whether name is a live (alive or suspect) member. The IPAM
// accepts a name it has not heard of only from members (or owners of
// space), so that invented names cannot fill its peer table.
func (m *Membership) IsMember(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[name]
	return ok && mem.State.Live()
}

// Start begins joining the targets, and pinging members this node
// suspects (reprobeLoop), in the background. Register channels
// before it, so that they take part in the first state exchanges.
func (m *Membership) Start() {
	m.startOnce.Do(func() {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.targets.loop(m.done)
		}()
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.reprobeLoop(m.done)
		}()
		if !m.cfg.BehindNAT && !m.cfg.DetectNAT {
			m.relay.reach.set(Reachability{State: api.ReachUnchecked})
			return
		}
		// Behind NAT by configuration: attached at once, no verdict
		// needed, but the public address the check observes is
		// announced. Otherwise the verdict decides whether to attach.
		then := m.attachHome
		if m.cfg.BehindNAT {
			m.relay.reach.set(Reachability{State: api.ReachConfigured})
			m.attachHome()
			then = m.announce
		}
		m.relay.wg.Add(2)
		go func() {
			m.relay.detectNAT(m.checkTargets, m.cfg.BehindNAT, then)
			m.relay.recheckReach(m.checkTargets, m.attachHome, m.detachHome, m.announce, m.cfg.ReachRecheck)
		}()
	})
}

// checkTargets are the peers the reachability check asks, in order: those
// named at launch, then those added at run time (Connect: with --kube,
// the Nodes), sorted. Not the peers learned through gossip, which a
// restart remembers: those may be long gone.
func (m *Membership) checkTargets() []string {
	out := slices.Clone(m.cfg.Targets)
	var added []string
	m.targets.mu.Lock()
	for addr, tg := range m.targets.list {
		if tg.source == SourceConnect && !slices.Contains(out, addr) {
			added = append(added, addr)
		}
	}
	m.targets.mu.Unlock()
	slices.Sort(added)
	return append(out, added...)
}

// attachHome makes this node, behind NAT, keep an attachment to a home
// and announce it. Called from Start or the reachability check; a second
// call while attached does nothing.
func (m *Membership) attachHome() {
	m.relay.att.mu.Lock()
	m.relay.att.onChange = m.announce
	m.relay.att.mu.Unlock()
	m.relay.startAttach(m.homeCandidates)
}

// detachHome ends the attachment of a node found reachable again: once it
// has ended, the node announces no home and others gossip to it directly.
func (m *Membership) detachHome() { m.relay.stopAttach() }

// announce gossips this node's metadata again, in the background, with
// what the membership adds to it (its home, its public address) as they
// are now.
func (m *Membership) announce() {
	go func() {
		m.metaMu.Lock()
		defer m.metaMu.Unlock()
		if err := m.updateMetaLocked(m.lastMeta); err != nil {
			m.log.Warn("failed to announce this node's home and public address", "error", err)
		}
	}()
}

// BehindNAT says whether this node attaches to a home: configured, or
// found by the reachability check. Safe for concurrent use.
func (m *Membership) BehindNAT() bool {
	return m.relay.reach.get().State.BehindNAT()
}

// Reachability is what this node knows of whether others can connect to
// its gossip address (natcheck.go). Safe for concurrent use; it does not
// block.
func (m *Membership) Reachability() Reachability { return m.relay.reach.get() }

// homeCandidates are the gossip addresses a node behind NAT tries to
// attach to, in order: the peers named at launch, then every live member.
func (m *Membership) homeCandidates() []string {
	out := append([]string(nil), m.cfg.Targets...)
	for _, addr := range m.relay.table.Load().addrs {
		if !slices.Contains(out, addr) {
			out = append(out, addr)
		}
	}
	return out
}

// Home names the member this node behind NAT is attached to ("" when it
// is not behind NAT, or not attached right now). Safe for concurrent use;
// it does not block.
func (m *Membership) Home() string { return m.relay.homeName() }

// Attached names the nodes behind NAT attached to this node, sorted. Safe
// for concurrent use; it does not block.
func (m *Membership) Attached() []string {
	out := m.relay.attachedNames()
	slices.Sort(out)
	return out
}

// LocalAddr is the address and port this node advertises.
func (m *Membership) LocalAddr() netip.AddrPort {
	return nodeAddr(m.list.LocalNode())
}

// Members returns every node known, this one included, sorted by name.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, *mem)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Member returns the named member as Members would, if it is known.
func (m *Membership) Member(name string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[name]
	if !ok {
		return Member{}, false
	}
	return *mem, true
}

// BoundIdentity returns the signing public key bound to name (docs/
// architecture.md, "Node identities"), nil when none is: the IPAM verifies
// peer infos with it. This node's own name is not in the table.
func (m *Membership) BoundIdentity(name string) ed25519.PublicKey {
	key := m.bindings.boundKey(name)
	if key == "" {
		return nil
	}
	pub, err := base64.StdEncoding.DecodeString(key)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil // LoadBindings and NotifyAlive store valid keys only
	}
	return ed25519.PublicKey(pub)
}

// Subscribe returns a channel that receives a value (coalesced, never
// blocking the sender) whenever the membership changes, but for a change
// of a member's network coordinate alone: that can only re-rank relays of
// equal hops, which a subscriber's periodic pass reconsiders soon enough,
// and in a large mesh it is the most frequent change at rest (at 100
// members about one a second, each a reconcile on every node:
// docs/scale.md). Members and Member show it at once.
func (m *Membership) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.subs = append(m.subs, ch)
	m.mu.Unlock()
	return ch
}

// UpdateMeta changes this node's metadata and gossips it.
func (m *Membership) UpdateMeta(meta Meta) error {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	return m.updateMetaLocked(meta)
}

// updateMetaLocked is UpdateMeta with metaMu held. The re-announcement of
// a new home goes through it with lastMeta read under the same lock, so
// it never puts back metadata older than the last UpdateMeta.
func (m *Membership) updateMetaLocked(meta Meta) error {
	m.lastMeta = meta
	meta.Home = m.relay.homeName()
	meta.PublicAddr = ""
	if r := m.relay.reach.get(); r.State.BehindNAT() {
		meta.PublicAddr = publicIP(r.Observed)
	}
	if meta.PublicAddr == "" || meta.PublicPort < 1 || meta.PublicPort > 65535 {
		// A port means something only with the public address it
		// belongs to: the daemon's answer may outlive the NAT.
		meta.PublicPort = 0
	}
	if (meta.Home != "" || meta.PublicAddr != "") && meta.Paths != nil {
		meta = meta.WithPaths(*meta.Paths) // the home's name and the public address must fit too
	}
	meta = meta.withRelayFields(m.keyring != nil)
	var b []byte
	var err error
	if m.cfg.SigningKey != nil {
		b, err = SignMeta(meta, m.cfg.SigningKey, m.cfg.Name, m.LocalAddr())
	} else {
		b, err = meta.Encode()
	}
	if err != nil {
		return err
	}
	m.delegate.setMeta(b)
	return m.list.UpdateNode(5 * time.Second)
}

// SetGossipKeys makes primary the key that encrypts gossip and others the
// further keys accepted for incoming gossip; every other key is dropped.
// memberlist decrypts with any installed key, so a mesh moves to a new key
// without a split: first every node accepts it, then each encrypts with it,
// then the old one is dropped.
func (m *Membership) SetGossipKeys(primary []byte, others [][]byte) error {
	if m.keyring == nil {
		return errors.New("gossip is not encrypted (--insecure): there is no keyring")
	}
	for _, k := range append([][]byte{primary}, others...) {
		if err := m.keyring.AddKey(k); err != nil {
			return fmt.Errorf("failed to install gossip key: %w", err)
		}
	}
	if err := m.keyring.UseKey(primary); err != nil {
		return fmt.Errorf("failed to make gossip key primary: %w", err)
	}
	keep := map[string]bool{string(primary): true}
	for _, k := range others {
		keep[string(k)] = true
	}
	for _, k := range m.keyring.GetKeys() {
		if !keep[string(k)] {
			if err := m.keyring.RemoveKey(k); err != nil {
				return fmt.Errorf("failed to remove gossip key: %w", err)
			}
		}
	}
	return nil
}

// Leave announces that this node leaves the mesh, waiting at most timeout
// for the message to spread. The node stays usable only for Close.
func (m *Membership) Leave(timeout time.Duration) error {
	m.stopLoop()
	m.sayGoodbye(timeout / 2)
	if err := m.list.Leave(timeout); err != nil {
		return fmt.Errorf("failed to leave the mesh: %w", err)
	}
	return nil
}

// Close stops the join loop and memberlist. It does not announce a leave:
// a crash-like stop lets the others detect the node as dead.
func (m *Membership) Close() error {
	var err error
	m.closeOnce.Do(func() {
		m.stopLoop()
		err = m.list.Shutdown()
	})
	return err
}

// stopLoopWait bounds how long a stop waits for the join loop: a join in
// flight to an unreachable address can take memberlist's TCP timeout (10 s);
// the loop returns on its own once it ends, and a join after Shutdown fails.
const stopLoopWait = 2 * time.Second

func (m *Membership) stopLoop() {
	m.stopOnce.Do(func() {
		close(m.done)
		stopped := make(chan struct{})
		go func() { m.wg.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(stopLoopWait):
			m.log.Debug("stopping without waiting for a join in flight", "after", stopLoopWait)
		}
	})
}

func (m *Membership) notify() {
	for _, ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (m *Membership) observe(n *memberlist.Node, state api.MemberState) {
	m.mu.Lock()
	self := n.Name == m.cfg.Name
	mem := memberFromNode(n, self)
	mem.State, mem.Since = state, time.Now()
	news := true
	if old, ok := m.members[n.Name]; ok && old.State == state {
		mem.Since = old.Since // a metadata update is no state change
		if !self {
			kind := metaUpdateKind(old.Meta, mem.Meta)
			m.updates.count(kind)
			// See Subscribe.
			news = kind != MetaUpdateCoordinate || old.Addr != mem.Addr
		}
	}
	m.members[n.Name] = mem
	m.pruneMembersLocked()
	if news {
		m.notify()
	}
	m.mu.Unlock()
	if !self {
		m.targets.learned(nodeAddr(n))
	}
}

func memberFromNode(n *memberlist.Node, self bool) *Member {
	meta, pub, err := VerifyMeta(n.Meta, n.Name, nodeAddr(n))
	mem := &Member{Name: n.Name, Addr: nodeAddr(n), State: api.MemberAlive, Self: self, Meta: meta, MetaErr: err}
	if pub != nil {
		mem.Identity = short(base64.StdEncoding.EncodeToString(pub))
	}
	return mem
}

// ForgetIdentity releases the binding of name to its signing identity on
// this node: the next identity seen for name is bound to it. It reports
// whether name was bound.
func (m *Membership) ForgetIdentity(name string) (bool, error) {
	if name == m.cfg.Name {
		return false, fmt.Errorf("refusing to forget the identity of this node's own name %q", name)
	}
	return m.bindings.forget(name)
}

// IdentityProblems names each node whose metadata is refused, once.
func (m *Membership) IdentityProblems() []string { return m.bindings.problems() }

// IdentityRefusals counts refused metadata by reason (Refused*).
func (m *Membership) IdentityRefusals() map[string]uint64 { return m.bindings.refusals() }

func nodeAddr(n *memberlist.Node) netip.AddrPort {
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// setState moves a member to state if it is currently in state from.
func (m *Membership) setState(name string, state, from api.MemberState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem, ok := m.members[name]; ok && mem.State == from && !mem.Self {
		mem.State, mem.Since = state, time.Now()
		m.notify()
	}
}

// events feeds memberlist's join/leave/update callbacks into the member map.
type events struct{ m *Membership }

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.m.log.Info("peer joined", "peer", n.Name, "address", nodeAddr(n))
	e.m.observe(n, api.MemberAlive)
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	if n.Name == e.m.cfg.Name {
		return
	}
	// memberlist does not say whether a node left or died (Node.State is
	// not maintained), so a leaving node says goodbye on our own channel
	// first; without that word it is dead.
	state := api.MemberDead
	e.m.mu.Lock()
	if e.m.byeFrom[n.Name] {
		state = api.MemberLeft
		delete(e.m.byeFrom, n.Name)
	}
	e.m.mu.Unlock()
	if state == api.MemberLeft {
		e.m.log.Info("peer left", "peer", n.Name)
	} else {
		e.m.log.Warn("peer is dead", "peer", n.Name, "address", nodeAddr(n))
	}
	e.m.observe(n, state)
}

func (e *events) NotifyUpdate(n *memberlist.Node) { e.m.observe(n, api.MemberAlive) }

// NotifyPingComplete is memberlist's PingDelegate: an answered probe proves
// the node alive from here, which clears a suspicion.
func (e *events) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	e.m.answered(n.Name)
}

// AckPayload is part of memberlist's PingDelegate; we send none.
func (e *events) AckPayload() []byte { return nil }

// suspected and answered are the two transitions of this node's own probe
// verdict: a probe that failed makes an alive member suspect, one answered
// (memberlist's probe or reprobeLoop's ping) makes a suspect alive again.
func (m *Membership) suspected(name string) { m.setState(name, api.MemberSuspect, api.MemberAlive) }

func (m *Membership) answered(name string) { m.setState(name, api.MemberAlive, api.MemberSuspect) }

// sayGoodbye tells every live member over TCP that this node is leaving, so
// they show it as left rather than dead. Bounded by timeout in total.
func (m *Membership) sayGoodbye(timeout time.Duration) {
	msg := envelope(channelControl, m.cfg.Name, []byte(controlBye))
	// In parallel and bounded as a whole: a send to an unreachable peer
	// blocks for memberlist's TCP timeout (10 s), which would hold up the
	// stop, and the goodbye to the peers that can hear it, for that long.
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, n := range m.list.Members() {
		if n.Name == m.cfg.Name {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.list.SendReliable(n, msg); err != nil {
				m.log.Debug("failed to say goodbye", "peer", n.Name, "error", err)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		m.log.Debug("stopped waiting for goodbyes to unreachable peers", "after", timeout)
	}
}
