package testnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// privateDirs are the paths each host has its own copy of, mapped to the
// directory under the host's root that backs them. /var/run maps to the same
// directory as /run whether or not it is a symlink to /run.
var privateDirs = []struct{ path, backing string }{
	{"/run", "run"},
	{"/var/run", "run"},
	{"/var/lib/mesh", "var/lib/mesh"},
	{"/etc/cni", "etc/cni"},
	{"/opt/cni", "opt/cni"},
	// The CNI cache of runtimes and cnitool: shared, pods of different
	// hosts would clash in it.
	{"/var/lib/cni", "var/lib/cni"},
}

// Host is one simulated machine. Its methods are safe for concurrent use.
type Host struct {
	// Name is "host<Index>"; it is also the host's hostname.
	Name string
	// Addr is the underlay address on eth0.
	Addr netip.Addr
	// Index counts hosts from 1 in creation order.
	Index int

	net    *Net
	dir    string   // host directory: ns/, root/, logs/
	site   *Site    // nil on the first network
	cg     *cgroup  // nil without cgroup v2
	cgFile *os.File // open handle of cg for CLONE_INTO_CGROUP

	mu     sync.Mutex
	procs  []*Proc
	logSeq int
}

// setup creates the host's namespaces, private directories and link.
func (h *Host) setup() error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	for _, d := range []string{"logs", "root/run", "root/var/lib/mesh", "root/etc/cni", "root/opt/cni"} {
		if err := os.MkdirAll(filepath.Join(h.dir, d), 0o755); err != nil {
			return fmt.Errorf("failed to create host directory %q: %w", d, err)
		}
	}
	cg, err := h.net.cg.child(h.Name)
	if err != nil {
		return err
	}
	if cg != nil {
		f, err := cg.open()
		if err != nil {
			return err
		}
		h.cg, h.cgFile = cg, f
	}
	if err := makeNamespaces(ctx, filepath.Join(h.dir, "ns"), true); err != nil {
		return err
	}

	port := h.switchPort()
	batch := fmt.Sprintf("link add %s type veth peer name eth0 netns %s\nlink set %s master %s\n", port, h.NetNS(), port, bridgeName)
	if h.net.mtu > 0 {
		batch += fmt.Sprintf("link set %s mtu %d\n", port, h.net.mtu)
	}
	batch += fmt.Sprintf("link set %s up\n", port)
	if err := runCmd(ctx, batch, "nsenter", "--net="+h.switchNS(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to create veth %q to host %q: %w", port, h.Name, err)
	}

	mtu := ""
	if h.net.mtu > 0 {
		mtu = strconv.Itoa(h.net.mtu)
	}
	addr := netip.PrefixFrom(h.Addr, h.subnet().Bits()).String()
	// An IPv6 address is usable at once, without the second of duplicate
	// address detection (the test network assigns each address once).
	nodad := ""
	if h.Addr.Is6() {
		nodad = "nodad"
	}
	// /run is bound last: the run directory itself might live under /run
	// (TMPDIR=/run/...), and would be hidden by then.
	const script = `set -e
mount --bind "$1/var/lib/mesh" /var/lib/mesh
mount --bind "$1/etc/cni" /etc/cni
mount --bind "$1/opt/cni" /opt/cni
mount -t sysfs sysfs /sys
echo "$2" > /proc/sys/kernel/hostname
ip link set lo up
[ -z "$4" ] || ip link set eth0 mtu "$4"
ip addr add "$3" dev eth0 $5
ip link set eth0 up
ip route add default dev eth0
for r in $6; do ip route add "${r%@*}" via "${r#*@}"; done
[ -L /var/run ] || [ ! -d /var/run ] || mount --bind "$1/run" /var/run
mount --bind "$1/run" /run
`
	args := append(h.nsenterArgs(), "--", "sh", "-ec", script, "sh", filepath.Join(h.dir, "root"), h.Name, addr, mtu, nodad, h.net.routesFor(h.site))
	if err := runCmd(ctx, "", "nsenter", args...); err != nil {
		return fmt.Errorf("failed to set up mounts and eth0 of host %q: %w", h.Name, err)
	}
	return nil
}

// subnet is the underlay subnet of the host's network.
func (h *Host) subnet() netip.Prefix {
	if h.site != nil {
		return h.site.subnet
	}
	return h.net.subnet
}

// switchNS is the network namespace of the host's switch.
func (h *Host) switchNS() string {
	if h.site != nil {
		return h.site.switchNS()
	}
	return h.net.switchNS()
}

// switchPort is the name of the host's veth end on the switch's bridge.
func (h *Host) switchPort() string { return fmt.Sprintf("vh%d", h.Index) }

// NetNS is the path of a file referring to the host's network namespace, for
// use with netns.GetFromPath, setns(2) or `nsenter --net=`.
func (h *Host) NetNS() string { return filepath.Join(h.dir, "ns", "net") }

// MountNS is the path of a file referring to the host's mount namespace.
func (h *Host) MountNS() string { return filepath.Join(h.dir, "ns", "mnt") }

// Dir is the host's directory on the real filesystem: root/ backs the
// host's private directories (see Path), logs/ holds the logs of Start.
func (h *Host) Dir() string { return h.dir }

// Path returns the real-filesystem path of what the host sees as the
// absolute path p. Under the host's private directories (/run, /var/run,
// /var/lib/mesh, /etc/cni, /opt/cni) that is a file under Dir()/root; any
// other path is shared with the machine and returned as is (except /sys,
// which shows the host's own sysfs and has no such path).
func (h *Host) Path(p string) string {
	p = filepath.Clean(p)
	for _, d := range privateDirs {
		if p == d.path || strings.HasPrefix(p, d.path+"/") {
			return filepath.Join(h.dir, "root", d.backing, strings.TrimPrefix(p, d.path))
		}
	}
	return p
}

// CopyFile copies the file src of the machine to path as the host sees it
// (see Path), with mode, creating the directories on the way: for installing
// a binary or a config into one host only.
func (h *Host) CopyFile(src, path string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("failed to read %q for %s: %w", src, h.Name, err)
	}
	dst := h.Path(path)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("failed to create the directory of %s in %s: %w", path, h.Name, err)
	}
	if err := os.WriteFile(dst, data, mode); err != nil {
		return fmt.Errorf("failed to write %s in %s: %w", path, h.Name, err)
	}
	return nil
}

// String returns the host's name and address.
func (h *Host) String() string { return fmt.Sprintf("%s(%s)", h.Name, h.Addr) }

func (h *Host) nsenterArgs() []string {
	ns := filepath.Join(h.dir, "ns")
	return []string{
		"--net=" + filepath.Join(ns, "net"),
		"--mount=" + filepath.Join(ns, "mnt"),
		"--uts=" + filepath.Join(ns, "uts"),
	}
}

// KillAll SIGKILLs every process of the host, as a power failure would, and
// waits (bounded) until they are gone. Without cgroup v2 it only finds the
// processes in the host's namespaces and the processes started by Start.
func (h *Host) KillAll() error {
	for _, p := range h.procList() {
		p.signalGroup()
	}
	var errs []error
	if err := h.cg.kill(killTimeout, false); err != nil {
		errs = append(errs, err)
	}
	ids := map[string]bool{}
	for _, ns := range []string{"net", "mnt", "uts"} {
		if link, err := nsID(filepath.Join(h.dir, "ns", ns), ns); err == nil {
			ids[link] = true
		}
	}
	if err := killInNamespaces(ids, killTimeout); err != nil {
		errs = append(errs, err)
	}
	for _, p := range h.procList() {
		if err := p.waitDone(killTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (h *Host) procList() []*Proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Proc(nil), h.procs...)
}

func (h *Host) closeCgroup() {
	if h.cgFile != nil {
		h.cgFile.Close()
	}
}
