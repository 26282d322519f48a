package testnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"
)

// DefaultPrefix names the run directories of a Net when Options.Prefix is
// empty.
const DefaultPrefix = "testnet"

// setupTimeout bounds each external command used to build or tear down the
// network; they normally take milliseconds.
const setupTimeout = 30 * time.Second

// bridgeName is the switch's bridge; it lives in the switch namespace only, so
// it cannot collide with other runs.
const bridgeName = "br0"

// hostMountPoints are the directories each host gets a private copy of. They
// must exist on the real filesystem to be mount points, so New creates the
// missing ones (empty, never removed: another test process may be using them
// as mount points at the same time).
var hostMountPoints = []string{"/var/lib/mesh", "/etc/cni", "/opt/cni", "/var/lib/cni"}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,19}$`)

// Options configure New.
type Options struct {
	// Hosts is the number of hosts New creates; more can be added with
	// Net.AddHost.
	Hosts int
	// Prefix names the run directory ("<Prefix>-<random>" in os.TempDir()),
	// letters and digits, at most 20 characters; default DefaultPrefix.
	Prefix string
	// Subnet is the underlay network; host i (1-based) gets the (10+i)th
	// address of it. Default 192.0.2.0/24 (TEST-NET-1, never routed). With
	// an IPv6 subnet the hosts' underlay has no IPv4 address.
	Subnet netip.Prefix
	// MTU of the hosts' eth0 and the switch ports; 0 keeps the kernel's
	// default (1500).
	MTU int
}

// defaultSubnet is TEST-NET-1 (RFC 5737), which is never routed.
func defaultSubnet() netip.Prefix { return netip.MustParsePrefix("192.0.2.0/24") }

// Net is a set of simulated hosts attached to one switch. Its methods are
// safe for concurrent use.
type Net struct {
	dir    string // run directory, a private bind mount of itself
	subnet netip.Prefix
	mtu    int
	cg     *cgroup // nil when cgroup v2 is not usable
	tb     testing.TB

	mu       sync.Mutex
	hosts    []*Host
	sites    []*Site
	closed   bool
	nftReady bool
}

// New builds the switch and opts.Hosts hosts. It blocks until all of them are
// up (a few hundred milliseconds) and fails t on any error. A t.Cleanup
// registered before anything is created tears everything down, also when New
// itself fails or panics half way. Call it from the test's goroutine.
func New(t testing.TB, opts Options) *Net {
	t.Helper()
	RequireRoot(t)
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(opts.Prefix) {
		t.Fatalf("invalid testnet prefix %q: want %s", opts.Prefix, prefixRE)
	}
	if !opts.Subnet.IsValid() {
		opts.Subnet = defaultSubnet()
	}
	opts.Subnet = opts.Subnet.Masked()
	if err := CleanupStale(opts.Prefix); err != nil {
		t.Logf("testnet: cleaning stale runs: %v", err)
	}
	n, err := newNet(opts)
	if err != nil {
		t.Fatalf("failed to create testnet: %v", err)
	}
	n.tb = t
	t.Cleanup(func() { n.close(t) })
	if err := n.setupSwitch(); err != nil {
		t.Fatalf("failed to set up testnet switch: %v", err)
	}
	for i := 0; i < opts.Hosts; i++ {
		n.AddHost(t)
	}
	return n
}

// newNet creates the run directory and makes it a private mount, which
// persistent mount namespace files require.
func newNet(opts Options) (*Net, error) {
	for _, p := range hostMountPoints {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("failed to create mount point %q: %w", p, err)
		}
	}
	dir, err := os.MkdirTemp("", opts.Prefix+"-")
	if err != nil {
		return nil, fmt.Errorf("failed to create run directory: %w", err)
	}
	if err := writeOwner(dir); err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	n := &Net{dir: dir, subnet: opts.Subnet, mtu: opts.MTU}
	if err := privateBind(dir); err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	n.cg = newCgroup(filepath.Base(dir))
	return n, nil
}

// setupSwitch creates the switch namespace and its bridge.
func (n *Net) setupSwitch() error {
	return n.setupSwitchIn(filepath.Join(n.dir, "switch"))
}

// setupSwitchIn creates a switch namespace in nsDir and its bridge.
func (n *Net) setupSwitchIn(nsDir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := makeNamespaces(ctx, nsDir, false); err != nil {
		return err
	}
	batch := fmt.Sprintf("link add %s type bridge\nlink set lo up\nlink set %s up\n", bridgeName, bridgeName)
	if n.mtu > 0 {
		batch += fmt.Sprintf("link set %s mtu %d\n", bridgeName, n.mtu)
	}
	if err := runCmd(ctx, batch, "nsenter", "--net="+filepath.Join(nsDir, "net"), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to create bridge %q in the switch: %w", bridgeName, err)
	}
	return nil
}

func (n *Net) switchNS() string { return filepath.Join(n.dir, "switch", "net") }

// Dir is the run directory holding the namespace files, the hosts' private
// directories and logs. It is removed by cleanup.
func (n *Net) Dir() string { return n.dir }

// Hosts returns the hosts in creation order (a copy of the slice).
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.hosts...)
}

// AddHost creates one more host, named "host<i>" with the (10+i)th address of
// the subnet, i counting from 1, and attaches it to the switch. It blocks
// until the host is up and fails t on error; call it from the goroutine of t.
// Concurrent calls are serialised. The host is torn down with the Net, not
// with t.
func (n *Net) AddHost(t testing.TB) *Host {
	t.Helper()
	h, err := n.addHost(nil)
	if err != nil {
		t.Fatalf("failed to add testnet host: %v", err)
	}
	return h
}

// addHost adds a host to site, or to the first network when site is nil.
func (n *Net) addHost(site *Site) (*Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("testnet already cleaned up")
	}
	subnet := n.subnet
	if site != nil {
		subnet = site.subnet
	}
	idx := len(n.hosts) + 1
	addr := subnet.Addr()
	for i := 0; i < 10+idx; i++ {
		addr = addr.Next()
	}
	if !subnet.Contains(addr) || !subnet.Contains(addr.Next()) || (len(n.sites) > 0 && addr == routerAddr(subnet)) {
		return nil, fmt.Errorf("subnet %s has no address for host %d", subnet, idx)
	}
	h := &Host{
		Name:  fmt.Sprintf("host%d", idx),
		Addr:  addr,
		Index: idx,
		net:   n,
		site:  site,
	}
	h.dir = filepath.Join(n.dir, h.Name)
	// Registered before setup so that cleanup finds its processes and cgroup
	// even when setup fails half way.
	n.hosts = append(n.hosts, h)
	if err := h.setup(); err != nil {
		return nil, fmt.Errorf("failed to set up host %q: %w", h.Name, err)
	}
	return h, nil
}

// close tears everything down; it is the t.Cleanup of New.
func (n *Net) close(t testing.TB) {
	n.mu.Lock()
	n.closed = true
	hosts := append([]*Host(nil), n.hosts...)
	n.mu.Unlock()

	var procs []*Proc
	for _, h := range hosts {
		procs = append(procs, h.procList()...)
	}
	for _, p := range procs {
		p.signalGroup()
	}
	if t.Failed() {
		for _, p := range procs {
			if QuietFailureLogs() {
				t.Logf("testnet: log of %s: %s", p, KeepLog(t, p))
				continue
			}
			t.Logf("testnet: log of %s (tail):\n%s", p, tail(p.Log(), 60))
		}
	}
	var errs []error
	if err := teardownDir(n.dir, n.cg); err != nil {
		errs = append(errs, err)
	}
	for _, p := range procs {
		if err := p.waitDone(5 * time.Second); err != nil {
			errs = append(errs, err)
		}
		p.closeLog()
	}
	for _, h := range hosts {
		h.closeCgroup()
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("testnet cleanup: %v", err)
	}
}
