package daemon

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshnet/mesh/attach"
	"github.com/meshnet/mesh/control"
	"github.com/meshnet/mesh/coord"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/fastdp/nat"
	"github.com/meshnet/mesh/fastdp/relayed"
	"github.com/meshnet/mesh/identity"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/isolation"
	"github.com/meshnet/mesh/mesh"
	"github.com/meshnet/mesh/peer"
)

// Daemon is a running node. Create it with Start, stop it with Stop.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	id      identity.Identity
	keys    *keyStore
	members *mesh.Membership
	ipam    *ipam.Allocator // the IPv4 range's
	// ipam6 is the IPv6 range's allocator of a dual-stack mesh; nil
	// without --ipalloc-range for IPv6.
	ipam6 *ipam.Allocator
	// e2e is this node's end-to-end address (e2e.go).
	e2e e2eAddr
	dp  fastdp.Dataplane // fastdp.None() with --dataplane none
	rec *peer.Reconciler
	// remembered are the data plane peers of the last run, applied before
	// gossip has rejoined; only the reconcile loop (and Start before it)
	// touches it.
	remembered *rememberedPeers
	nat        natTable          // noNAT with --dataplane none
	relayed    relayCounter      // noRelayCounter with --dataplane none
	policy     podPolicy         // noPolicy unless --kube and not --no-policy
	attach     *attach.Manager   // `mesh attach`: namespaces attached by hand
	iso        *isolation.Tables // nil without a data plane or with --no-port-isolation
	isoMu      sync.Mutex        // serialises syncIsolation; guards legacyMACs
	// legacyMACs are the MACs of pods wired before port isolation, by
	// port (see adoptLegacyPorts).
	legacyMACs map[string]net.HardwareAddr
	mtu        int
	// prober probes the direct paths; nil without a data plane or when it
	// could not open, and handed to the path loop once it starts.
	prober prober
	// coords is this node's network coordinate, moved by the probes' round
	// trips; nil when nothing is probed. Used by the path loop only.
	coords *coord.Client
	// coordPub is the coordinate this node publishes and coordPubAt when
	// it last changed (publishedCoord). Path loop only.
	coordPub   []int
	coordPubAt time.Time
	// natPorts asks, behind NAT, which port the NAT gives the data plane,
	// and natPortSender sends its questions and answers (natport.go).
	natPorts       *natPorts
	natPortSender  mesh.Sender
	natPortQueries chan natPortQuestion

	server   *http.Server
	listener net.Listener
	metrics  *http.Server
	served   chan error

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// leaving is closed once `mesh leave` has left the mesh; left says so
	// to the reconcile loop (which then saves no peers) and to Stop.
	leaveOnce sync.Once
	leaving   chan struct{}
	leaveErr  error // set before leaving is closed
	left      atomic.Bool

	// kick asks the reconcile loop for a pass now (after a rotation).
	kick chan struct{}
	// ipamMembers carries the reconcile loop's latest membership snapshot
	// to the tick loop, which feeds it to the IPAM: SetMembers may send (a
	// new node's space request), and the data plane must not wait on that.
	ipamMembers chan map[string]bool
	// rotateMu serialises rotations.
	rotateMu sync.Mutex

	// self: this node's WireGuard key (rotated by mesh rotate --node-key)
	// and what it gossips about itself.
	self    selfState
	cniDone atomic.Bool
	cniErr  lastError // last failure to install the CNI plugin
	natErr  lastError // last error of the NAT table
	// relayedErr: last error of the relayed-traffic counter's table
	relayedErr lastError

	health loopHealth // progress of the main loops, for /healthz
	// badMeta: member name -> why it gets no WireGuard peer (logged once).
	badMeta     badMetaLog
	isoRestores atomic.Int64 // isolation tables restored after an outside change
	isoErr      lastError    // last failure to program the isolation tables, nil once it worked
}

// Start brings the node up: identity, keys, data plane, gossip, IPAM and
// the control socket. It returns once the socket is serving; joining peers
// goes on in the background. On error, everything started so far is
// stopped again (the data plane's interfaces excepted: they are adopted by
// the next start, and `mesh reset` removes them).
func Start(cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	// The secrets first: a bad key file stops the daemon before it touches
	// the host.
	ks := &keyStore{}
	if cfg.hasSecret() {
		keys, err := ks.loadKeys(&cfg)
		if err != nil {
			return nil, err
		}
		// Nothing is known of the others yet: encrypt with the oldest key,
		// which a mesh in the middle of a rotation or upgrade still reads.
		ks.keys, ks.primary = keys, gossipPrimary(keys, nil, nil)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("failed to create state dir %q: %w", cfg.StateDir, err)
	}
	id, err := identity.Load(cfg.path("identity.json"), cfg.Name)
	if err != nil {
		return nil, err
	}
	key, err := identity.LoadOrCreateWireGuardKey(cfg.path("wireguard.key"))
	if err != nil {
		return nil, err
	}
	signKey, err := identity.LoadOrCreateSigningKey(cfg.path("signing.key"))
	if err != nil {
		return nil, err
	}
	pub, err := key.Public()
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, id: id, served: make(chan error, 1), kick: make(chan struct{}, 1), keys: ks,
		ipamMembers: make(chan map[string]bool, 1),
		leaving:     make(chan struct{}), policy: noPolicy{}, nat: noNAT{}, relayed: noRelayCounter{}}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			d.close()
		}
	}()

	initialPeers := len(cfg.Peers) + 1
	var kube *kubeSource
	if cfg.Kube {
		if kube, err = newKubeSource(d.ctx, cfg, id.Name, log.With("component", "kube")); err != nil {
			return nil, err
		}
		initialPeers = kube.initialPeers()
	}

	if cfg.Dataplane == DataplaneNone {
		d.dp = fastdp.None()
	} else {
		opts := fastdp.DefaultOptions()
		opts.Mode = cfg.Dataplane
		opts.DeviceName = cfg.WGDevice
		opts.Logger = log
		opts.Process, opts.ProcessBinary, opts.ProcessArgs = dataplaneProcess(cfg)
		if d.dp, err = fastdp.New(d.ctx, opts); err != nil {
			return nil, err
		}
		d.nat = nat.New()
		d.relayed = relayed.New()
	}
	d.rec = peer.NewReconciler(d.dp, log)
	d.remembered = loadRemembered(cfg.path(rememberedFileName), time.Now(), log)

	mc := mesh.DefaultConfig()
	mc.Name = id.Name
	meta := mesh.Meta{PeerID: id.PeerID, Version: cfg.Version, PublicKey: pub.String(), DPPort: cfg.DPPort, IPAMInfos: mesh.IPAMInfosRead, IPAMDeltas: mesh.IPAMDigestsVersion, IPAMJoining: mesh.IPAMVouchesVersion}
	// Set before any WithPaths, so that the path report leaves room for
	// the signature; SignMeta sets it again.
	meta.SignKey = base64.StdEncoding.EncodeToString(signKey.Public().(ed25519.PublicKey))
	mc.SigningKey = signKey
	mc.BindingsFile = cfg.path("identities.json")
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.Port = cfg.Port
	mc.Targets = cfg.Peers
	mc.BehindNAT = cfg.BehindNAT
	mc.DetectNAT = cfg.NATCheck
	mc.ReachRecheck = cfg.ReachRecheck
	mc.Timing = cfg.GossipTiming
	mc.RememberedFile = cfg.path("peers.json")
	mc.PushPullInterval = pushPullInterval(cfg.ReclaimAfter)
	mc.Logger = log.With("component", "mesh")
	if len(ks.keys) == 0 {
		log.Warn("running without a mesh password (--insecure): gossip is neither encrypted nor authenticated, and anyone who can reach port 6783 can join")
	} else {
		mc.GossipKey, mc.SecondaryGossipKeys = gossipKeys(ks.keys, ks.primary)
		meta.Keys = keyIDs(ks.keys)
		log.Info("mesh keys loaded", "keys", meta.Keys, "gossip", ks.primary.ID())
	}
	d.self.key, d.self.meta = key, meta
	d.openProber()
	_, mc.Meta = d.self.get()
	if d.members, err = mesh.New(mc); err != nil {
		return nil, err
	}
	d.mtu = d.detectMTU()
	d.natPorts = newNATPorts()
	d.natPortQueries = make(chan natPortQuestion, natPortAnswersPerSecond)
	if d.natPortSender, err = d.members.Register(mesh.ChannelNATPort, natPortChannel{d}); err != nil {
		return nil, err
	}

	if err := d.startIPAM(initialPeers, signKey); err != nil {
		return nil, err
	}
	// Before the socket serves: no ADD may wire a pod before its port's
	// rules exist.
	d.startIsolation()
	if err := d.startAttach(); err != nil {
		return nil, err
	}
	// The data plane of the last run (keys, peers, endpoints, this node's
	// ranges and overlay IP, all from the state dir) before gossip has
	// joined anyone: a restarted node forwards at once, and a view that is
	// only empty because gossip has not rejoined removes no peer.
	d.reconcileDataplane(d.ctx, d.members.Members())
	d.members.Start()

	if d.listener, err = control.Listen(cfg.Socket); err != nil {
		return nil, err
	}
	d.server = &http.Server{Handler: control.Handler(d.backend()), ReadHeaderTimeout: 10 * time.Second}
	go func() { d.served <- d.server.Serve(d.listener) }()
	if err := d.startMetrics(); err != nil {
		return nil, err
	}

	d.goLoop(loopIPAMTick, d.tickLoop)
	d.goLoop(loopReconcile, d.reconcileLoop)
	d.goLoop("attach-check", d.attachLoop)
	d.goEvery("nat-port", natPortEvery, d.natPortRound)
	d.goLoop("nat-port-answers", d.natPortAnswerLoop)
	d.startPaths()
	if kube != nil {
		kube.start(d)
	}
	log.Info("mesh daemon started", "name", id.Name, "peerID", id.PeerID, "gossip", d.members.LocalAddr(),
		"socket", cfg.Socket, "dataplane", d.dp.Kind(), "mtu", d.mtu, "range", ipam.ClusterRanges{IPv4: cfg.IPAllocRange, IPv6: cfg.IPAllocRange6}.String(), "version", cfg.Version)
	return d, nil
}

// goLoop runs a named loop until Stop.
func (d *Daemon) goLoop(name string, f func(ctx context.Context)) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f(d.ctx)
		d.log.Debug("loop stopped", "loop", name)
	}()
}

// goEvery is goLoop of a loop that calls f every interval, first one
// interval after the start, until the daemon stops.
func (d *Daemon) goEvery(name string, every time.Duration, f func(ctx context.Context)) {
	d.goLoop(name, func(ctx context.Context) {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f(ctx)
			}
		}
	})
}

// Stop stops gossip, IPAM and the socket without leaving the mesh: a stop
// (SIGTERM) is a restart, an upgrade or a rollout, and the node comes back.
// The others keep it a member until memberlist's failure detection calls
// it dead, and keep its WireGuard peer for peer.Grace beyond that. The data
// plane's interfaces, routes and NAT table stay up and the next start
// adopts them. Only `mesh leave` (handleLeave) leaves gracefully; after it,
// Stop forgets the remembered peers, so a later start is a fresh join.
func (d *Daemon) Stop() error {
	d.cancel()
	d.wg.Wait()
	if d.left.Load() {
		d.remembered.forget()
		d.shutdownDataplane()
	}
	d.close()
	if d.left.Load() {
		d.log.Info("mesh daemon stopped after leaving the mesh")
	} else {
		d.log.Info("mesh daemon stopped; still a member of the mesh (mesh leave leaves it)")
	}
	return nil
}

// shutdownDataplane, after a leave, stops the data-plane process and
// removes the WireGuard device (fastdp's Shutdown): a node that left
// carries no mesh traffic, and no process of it stays behind.
func (d *Daemon) shutdownDataplane() {
	s, ok := d.dp.(interface{ Shutdown(context.Context) error })
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		d.log.Error("failed to shut the data plane down after leaving (mesh reset removes it)", "err", err)
	}
}

// Done returns a channel that receives the control server's error if it
// stops serving on its own.
func (d *Daemon) Done() <-chan error { return d.served }

func (d *Daemon) close() {
	d.cancel()
	d.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if d.server != nil {
		d.server.Shutdown(ctx)
	}
	if d.metrics != nil {
		d.metrics.Shutdown(ctx)
	}
	if d.listener != nil {
		os.Remove(d.cfg.Socket)
	}
	if d.members != nil {
		d.members.Close()
	}
	for _, a := range d.allocators() {
		if err := a.Close(); err != nil {
			d.log.Error("IPAM state not saved on stop", "range", a.Status().Range, "err", err)
		}
	}
	if d.prober != nil { // Start failed before the path loop took it
		d.prober.Close()
	}
	if d.dp != nil { // nil when Start failed before choosing one
		d.dp.Close()
	}
}

// dataplaneProcess is where the userspace data plane runs (see
// Config.DataplaneProcess): the mode, the mesh-dataplane program next to
// this executable, and its arguments.
func dataplaneProcess(cfg Config) (mode, bin string, args []string) {
	mode = cfg.DataplaneProcess
	if self, err := os.Executable(); err == nil {
		bin = filepath.Join(filepath.Dir(self), fastdp.ProcessBinaryName)
	}
	level := "info"
	if cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		level = "debug"
	}
	return mode, bin, []string{"--log-level", level}
}

// detectMTU picks the overlay MTU: --mtu, else the underlay's minus the
// WireGuard overhead, else the default.
func (d *Daemon) detectMTU() int {
	if d.cfg.MTU != 0 {
		return d.cfg.MTU
	}
	addr := d.members.LocalAddr().Addr()
	if mtu, err := fastdp.DetectMTU(addr); err == nil {
		return mtu
	} else {
		d.log.Warn("cannot detect the underlay MTU, using the default", "default", fastdp.DefaultMTU, "error", err)
	}
	return fastdp.DefaultMTU
}
