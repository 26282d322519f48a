package fastdp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Link aliases (IFLA_IFALIAS) mark the links fastdp manages. Set uses them to
// find a bridge left behind by an earlier BridgeName; Reset removes every
// link that carries one.
const (
	aliasPrefix = "mesh:"
	aliasWG     = aliasPrefix + "wireguard"
	aliasBridge = aliasPrefix + "bridge"
)

// wgImpl is what differs between the kernel and the userspace data plane:
// how the WireGuard link comes to exist and who drives it. Everything else,
// including the WireGuard configuration through wgctrl, is shared.
type wgImpl interface {
	kind() string
	// ensure makes the WireGuard link exist and be served. undo reverses
	// what this call created; it is nil when nothing was created.
	ensure(mtu int) (link netlink.Link, undo func() error, err error)
	// close stops what this process runs for the device; the link stays.
	close() error
}

type dataplane struct {
	log  *slog.Logger
	name string
	ns   *netNS
	nl   *netlink.Handle
	wg   *wgctrl.Client
	impl wgImpl

	mu     sync.Mutex // serializes Set, Stats and Close
	closed bool
	last   *Config // the last config Set applied successfully
	// adoptUntil ends the grace in which Set keeps the peers it found on
	// a WireGuard device left by an earlier process (see AdoptGrace);
	// zero when New found no device. adopted holds those peers until a
	// config names them (from then on they are this process's own);
	// keeping counts the peers the last Set kept.
	adoptUntil time.Time
	adopted    map[wgtypes.Key]bool
	keeping    int
	// wgWant is the config the WireGuard device was last brought to;
	// release, when set, is the pending pass that gives the peers added
	// by holdFirstKeepalives their keepalive (at most one at a time).
	wgWant  *Config
	release *time.Timer
	// stopWatch ends watch (a data-plane process only).
	stopWatch chan struct{}
	// inner is the end-to-end device (Config.Inner).
	inner innerDevice
}

// AdoptGrace is how long after New, on a WireGuard device that already
// existed (a restarted daemon), Set keeps the peers it found on the device
// and that no config of this process has named yet. A restarted daemon knows only itself until it has
// rejoined the mesh, which takes about a second; removing its peers
// meanwhile would cut the traffic that the kernel kept forwarding while no
// daemon ran, and force new handshakes. Peers still unnamed after the grace
// are removed by the next Set.
const AdoptGrace = 30 * time.Second

// Adopting reports whether the last Set kept peers under AdoptGrace. A
// caller that skips Set for an unchanged config must call it again while
// this is true, so that those peers go once the grace has passed (see
// peer.Reconciler).
func (d *dataplane) Adopting() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.keeping > 0
}

// New selects the implementation (see Options.Mode) and prepares it. It
// changes nothing on the host; the first Set creates or adopts the links.
//
// In ModeAuto an existing WireGuard link of DeviceName decides (a daemon
// restart keeps its implementation); otherwise New probes by creating a
// throwaway "wireguard" link, and falls back to userspace when the kernel
// does not know that link kind.
func New(ctx context.Context, opts Options) (_ Dataplane, err error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	log := opts.Logger.With("component", "fastdp", "device", opts.DeviceName)
	ns, err := openNetNS(opts.NetNSPath)
	if err != nil {
		return nil, err
	}
	var cleanup []func() error
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				_ = cleanup[i]()
			}
		}
	}()
	cleanup = append(cleanup, ns.close)

	nl, err := ns.netlinkHandle()
	if err != nil {
		return nil, fmt.Errorf("failed to open netlink in network namespace %s: %w", ns, err)
	}
	cleanup = append(cleanup, func() error { nl.Close(); return nil })

	if err := ctx.Err(); err != nil {
		return nil, err
	}
	kind, err := selectKind(nl, opts, log)
	if err != nil {
		return nil, err
	}

	// wgctrl's kernel client is a generic netlink socket, which belongs to
	// the namespace it is opened in; its userspace client finds
	// /var/run/wireguard/<dev>.sock, which is the same for both kinds.
	var wg *wgctrl.Client
	if err := ns.do(func() (err error) { wg, err = wgctrl.New(); return err }); err != nil {
		return nil, fmt.Errorf("failed to open wgctrl: %w", err)
	}
	cleanup = append(cleanup, wg.Close)

	d := &dataplane{log: log, name: opts.DeviceName, ns: ns, nl: nl, wg: wg}
	if _, err := linkByName(nl, opts.DeviceName); err == nil {
		d.adoptUntil = time.Now().Add(AdoptGrace)
	}
	switch {
	case kind == ModeKernel:
		d.impl = &kernelImpl{name: opts.DeviceName, nl: nl}
	case useProcess(opts, log):
		d.stopWatch = make(chan struct{})
		p := newProcessImpl(opts, nl, log, d.stopWatch)
		d.impl = p
		go d.watch(p)
	default:
		d.impl = &userspaceImpl{name: opts.DeviceName, ns: ns, nl: nl, log: log}
	}
	log.Debug("data plane selected", "kind", kind, "process", opts.Process, "netns", ns.String())
	return d, nil
}

// useProcess decides whether the userspace data plane runs in a
// mesh-dataplane process (see Options.Process).
func useProcess(opts Options, log *slog.Logger) bool {
	switch opts.Process {
	case ProcessExternal:
		return true
	case ProcessAuto:
		if st, err := os.Stat(opts.ProcessBinary); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			log.Warn("the data-plane program is missing: running wireguard-go in this process, so a restart of the daemon interrupts traffic",
				"binary", opts.ProcessBinary)
			return false
		}
		return true
	}
	return false
}

// watch notices that the data-plane process is gone (it exited, or its
// UAPI socket stopped answering) and brings a new one to the last config
// (started here in ProcessAuto; in ProcessExternal, once its supervisor
// has started it). A reconcile whose config has not changed does not call
// Set, so without this the daemon would not notice before its next change.
func (d *dataplane) watch(p *processImpl) {
	t := time.NewTicker(processCheckInterval)
	defer t.Stop()
	// After a failed attempt the next waits for the ticker: a process
	// that exits at once (its device busy, say) must not be restarted in
	// a tight loop by its own exit notice.
	var failed time.Time
	for {
		select {
		case <-d.stopWatch:
			return
		case <-t.C:
		case <-p.exited:
			if time.Since(failed) < processCheckInterval {
				continue
			}
		}
		up := p.alive()
		if up && !p.needsConfig() {
			continue
		}
		if !up && p.bin == "" {
			continue // its supervisor starts it; configured once it answers
		}
		d.mu.Lock()
		if !d.closed && d.last != nil {
			d.log.Warn("the data-plane process is gone or new; bringing it to the last config")
			// The new process has no peers: it is a first configuration,
			// which initiates to all at once.
			d.wgWant = nil
			if err := d.apply(context.Background(), d.last); err != nil {
				failed = time.Now()
				d.log.Warn("failed to configure a new data-plane process; retrying", "err", err)
			}
		}
		d.mu.Unlock()
	}
}

// ProcessStatus reports the data-plane process, and false when wireguard-go
// does not run in one (the kernel module, or in this process).
func (d *dataplane) ProcessStatus() (ProcessStatus, bool) {
	p, ok := d.impl.(*processImpl)
	if !ok {
		return ProcessStatus{}, false
	}
	return p.status(), true
}

// Shutdown is for a node that leaves the mesh: it stops wireguard-go
// (this process's, or the data-plane process serving the device), removes
// the WireGuard device (kernel or TUN), so that a node that left carries no
// mesh traffic and leaves no process behind, and closes the data plane.
// The bridge and the pods' routes stay until `mesh reset`. A data-plane
// process a supervisor runs (ProcessExternal) is not stopped, as the
// supervisor would only start it again: its peers are removed instead.
func (d *dataplane) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("data plane is closed")
	}
	if p, ok := d.impl.(*processImpl); ok && p.bin == "" {
		var errs []error
		if err := d.wg.ConfigureDevice(d.name, wgtypes.Config{ReplacePeers: true}); err != nil {
			errs = append(errs, fmt.Errorf("failed to remove the peers of %q: %w", d.name, err))
		} else {
			d.log.Info("removed every WireGuard peer; the supervisor's data-plane process keeps running")
		}
		if err := d.removeStaleInner(""); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(append(errs, d.closeLocked())...)
	}
	var errs []error
	if err := d.impl.close(); err != nil {
		errs = append(errs, err)
	}
	if err := d.removeStaleInner(""); err != nil {
		errs = append(errs, err)
	}
	if _, err := StopProcess(ctx, Options{DeviceName: d.name, Logger: d.log}); err != nil {
		errs = append(errs, err)
	}
	l, err := linkByName(d.nl, d.name)
	switch {
	case err == nil:
		if err := d.nl.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("failed to remove link %q: %w", d.name, err))
		} else {
			d.log.Info("removed the WireGuard device")
		}
	case !isNotFound(err):
		errs = append(errs, fmt.Errorf("failed to look up link %q: %w", d.name, err))
	}
	errs = append(errs, d.closeLocked())
	return errors.Join(errs...)
}

// selectKind decides between the kernel and the userspace data plane.
func selectKind(nl *netlink.Handle, opts Options, log *slog.Logger) (string, error) {
	name := opts.DeviceName
	l, err := linkByName(nl, name)
	switch {
	case err == nil:
		var existing string
		switch l.Type() {
		case "wireguard":
			existing = ModeKernel
		case "tuntap":
			existing = ModeUserspace
		default:
			return "", fmt.Errorf("link %q exists and is a %s, not a WireGuard device", name, l.Type())
		}
		if opts.Mode != ModeAuto && opts.Mode != existing {
			return "", fmt.Errorf("link %q is a %s data plane left by an earlier run, but %s was asked for; run `mesh reset` first or use --dataplane %s",
				name, existing, opts.Mode, existing)
		}
		return existing, nil
	case !isNotFound(err):
		return "", fmt.Errorf("failed to look up link %q: %w", name, err)
	}

	if opts.Mode == ModeUserspace {
		return ModeUserspace, nil
	}
	cause := probeKernel(nl)
	switch {
	case cause == nil:
		return ModeKernel, nil
	case !kernelUnsupported(cause):
		return "", fmt.Errorf("failed to probe for kernel WireGuard: %w", cause)
	case opts.Mode == ModeKernel:
		return "", fmt.Errorf("%w (%v); use --dataplane userspace or auto", ErrKernelUnavailable, cause)
	}
	log.Info("kernel WireGuard is not available, using userspace wireguard-go", "reason", cause.Error())
	return ModeUserspace, nil
}

// probeKernel creates and deletes a "wireguard" link under a random name.
func probeKernel(nl *netlink.Handle) error {
	var b [3]byte
	_, _ = rand.Read(b[:])
	la := netlink.NewLinkAttrs()
	la.Name = "meshprobe" + hex.EncodeToString(b[:])
	wg := &netlink.Wireguard{LinkAttrs: la}
	if err := nl.LinkAdd(wg); err != nil {
		return err
	}
	if err := nl.LinkDel(wg); err != nil {
		return fmt.Errorf("failed to delete probe link %q: %w", la.Name, err)
	}
	return nil
}

// kernelUnsupported recognizes the kernel's answer to a link kind it does not
// know: EOPNOTSUPP, with the extended ack "Unknown device type" (older
// kernels and some wrappers spell it "unknown kind").
func kernelUnsupported(err error) bool {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, ErrKernelUnavailable) {
		return true
	}
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "unknown device type") || strings.Contains(s, "unknown kind")
}

func (d *dataplane) Kind() string { return d.impl.kind() }

// Set makes the host match cfg: the WireGuard link and its peers, the bridge
// and its address, the routes and IP forwarding. It reads the current state
// each time (a handful of netlink dumps) and writes only what differs, so an
// unchanged config costs no writes and a drifted host is repaired.
//
// On failure, what this call created (links, the bridge address, routes) is
// removed again; changes to objects that existed before (peer settings, MTU,
// a replaced route) are left for the next Set to converge.
func (d *dataplane) Set(ctx context.Context, cfg *Config) (err error) {
	want, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("data plane is closed")
	}
	return d.apply(ctx, want)
}

// apply is Set for a config with its defaults filled in; d.mu is held.
func (d *dataplane) apply(ctx context.Context, want *Config) (err error) {
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run(d.log)
		}
	}()

	if err := ctx.Err(); err != nil {
		return err
	}
	wgLink, u, err := d.impl.ensure(want.MTU)
	if err != nil {
		return err
	}
	undo.push(fmt.Sprintf("remove link %q", d.name), u)

	// The config this process last set, set again (a resync), and no
	// keepalive held back nor adopted peer kept: whatever still differs
	// was changed by someone else.
	resync := d.last != nil && d.last.Equal(want) && d.release == nil && !time.Now().Before(d.adoptUntil)
	if err := d.configureWireGuard(want, resync); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.ensureLinkState(wgLink, want.MTU, aliasWG); err != nil {
		return err
	}
	br, err := d.ensureBridge(want, &undo)
	if err != nil {
		return err
	}
	if err := d.ensureBridgeAddr(br, []netip.Prefix{want.BridgeAddr, want.BridgeAddr6}, &undo); err != nil {
		return err
	}
	inner, err := d.ensureInner(want, &undo)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.ensureRoutes(want, wgLink, br, inner, &undo); err != nil {
		return err
	}
	if err := d.ensureForwarding(want.ClusterRange.Addr().Is6()); err != nil {
		return err
	}
	if want.ClusterRange6.IsValid() {
		if err := d.ensureForwarding(true); err != nil {
			return err
		}
	}
	if err := d.removeStaleBridges(want.BridgeName); err != nil {
		return err
	}
	if p, ok := d.impl.(*processImpl); ok {
		p.configured()
	}
	d.last = want
	return nil
}

// configureWireGuard brings the device's key, port and peers to want.
// resync says the device should already match want, so that a difference
// was made from outside and is logged as a warning.
func (d *dataplane) configureWireGuard(want *Config, resync bool) error {
	cur, err := d.wg.Device(d.name)
	if err != nil {
		return fmt.Errorf("failed to read WireGuard device %q: %w", d.name, err)
	}
	change, changed := wgDiff(cur, want, d.last)
	d.keeping = 0
	if time.Now().Before(d.adoptUntil) {
		if d.adopted == nil {
			d.adopted = make(map[wgtypes.Key]bool, len(cur.Peers))
			for _, p := range cur.Peers {
				d.adopted[p.PublicKey] = true
			}
		}
		for _, p := range want.Peers {
			delete(d.adopted, wgtypes.Key(p.PublicKey))
		}
		change, d.keeping, changed = keepPeers(change, d.adopted)
		if d.keeping > 0 {
			d.log.Info("kept peers of the adopted WireGuard device until the mesh is rejoined", "kept", d.keeping,
				"grace_left", time.Until(d.adoptUntil).Round(time.Second).String())
		}
	}
	if !changed {
		d.wgWant = want
		return nil
	}
	// Not in this process's first configuration: the peers a restarted
	// daemon restores already have this node configured and wait for its
	// handshake, so it initiates to all of them at once.
	held := 0
	if d.wgWant != nil {
		change, held = holdFirstKeepalives(change, wgtypes.Key(want.PrivateKey).PublicKey())
	}
	if err := d.wg.ConfigureDevice(d.name, change); err != nil {
		return fmt.Errorf("failed to configure WireGuard device %q: %w", d.name, err)
	}
	d.wgWant = want
	if held > 0 && d.release == nil {
		d.release = time.AfterFunc(firstHandshakeStagger, d.releaseKeepalives)
	}
	var added, updated, removed int
	for _, p := range change.Peers {
		switch {
		case p.Remove:
			removed++
		case p.UpdateOnly:
			updated++
		default:
			added++
		}
	}
	// Counts only: the change holds the private and preshared keys.
	if resync {
		d.log.Warn("the WireGuard device was changed from outside: restored its peers", "peers_added", added, "peers_updated", updated, "peers_removed", removed,
			"key_changed", change.PrivateKey != nil, "listen_port", want.ListenPort)
		return nil
	}
	d.log.Info("configured WireGuard", "peers_added", added, "peers_updated", updated, "peers_removed", removed,
		"key_changed", change.PrivateKey != nil, "listen_port", want.ListenPort, "peers", len(want.Peers))
	return nil
}

// releaseKeepalives brings the device to the last config again, which
// gives the peers holdFirstKeepalives added their keepalive (and so starts
// their handshake, unless the other side's came through meanwhile).
func (d *dataplane) releaseKeepalives() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.release = nil
	if d.closed || d.wgWant == nil {
		return
	}
	if err := d.configureWireGuard(d.wgWant, false); err != nil {
		d.log.Warn("failed to set the keepalive of new peers; the next Set retries", "err", err)
	}
}

// Stats reports the peers as the WireGuard device sees them.
func (d *dataplane) Stats(ctx context.Context) ([]PeerStats, error) {
	return d.deviceStats(ctx, func() string { return d.name })
}

// deviceStats reads the peers of the device name() returns (with d.mu
// held); none when it returns "".
func (d *dataplane) deviceStats(ctx context.Context, name func() string) ([]PeerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("data plane is closed")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dev := name()
	if dev == "" {
		return nil, nil
	}
	wd, err := d.wg.Device(dev)
	if err != nil {
		return nil, fmt.Errorf("failed to read WireGuard device %q: %w", dev, err)
	}
	return peerStats(wd), nil
}

// Close stops the goroutines and releases the handles. The links, addresses
// and routes stay, and so does a userspace TUN device (it is persistent).
func (d *dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	return d.closeLocked()
}

// closeLocked is Close with d.mu held.
func (d *dataplane) closeLocked() error {
	d.closed = true
	if d.stopWatch != nil {
		close(d.stopWatch)
	}
	if d.release != nil {
		d.release.Stop()
	}
	err := d.impl.close()
	if cerr := d.inner.stop(); cerr != nil && err == nil {
		err = cerr
	}
	if cerr := d.wg.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("failed to close wgctrl: %w", cerr)
	}
	d.nl.Close()
	if cerr := d.ns.close(); cerr != nil && err == nil {
		err = fmt.Errorf("failed to close network namespace handle: %w", cerr)
	}
	return err
}

// undoStack collects the reversal of every creation in one Set call.
type undoStack []undoStep

type undoStep struct {
	what string
	fn   func() error
}

func (u *undoStack) push(what string, fn func() error) {
	if fn != nil {
		*u = append(*u, undoStep{what, fn})
	}
}

func (u undoStack) run(log *slog.Logger) {
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i].fn(); err != nil {
			log.Warn("rollback step failed", "step", u[i].what, "err", err)
		}
	}
}

func linkByName(nl *netlink.Handle, name string) (netlink.Link, error) {
	return nl.LinkByName(name)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// dump retries a netlink dump that the kernel interrupted because the table
// changed under it, as the partial result cannot be trusted for a diff.
func dump[T any](f func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
