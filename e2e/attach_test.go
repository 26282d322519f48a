package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// meshAttach runs `mesh attach -o json` on n's host as a user would.
func meshAttach(ctx context.Context, n *node, target string) (api.Attachment, error) {
	var a api.Attachment
	out, err := n.Host.Run(ctx, n.Bin, "attach", "-o", "json", target)
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		return a, fmt.Errorf("bad attach JSON %q: %w", out, err)
	}
	if _, err := netip.ParsePrefix(a.Address); err != nil {
		return a, fmt.Errorf("attach answered no address: %q", out)
	}
	return a, nil
}

func attachments(ctx context.Context, t *testing.T, n *node) []api.Attachment {
	t.Helper()
	out, err := n.Host.Run(ctx, n.Bin, "attach", "--list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var as []api.Attachment
	if err := json.Unmarshal([]byte(out), &as); err != nil {
		t.Fatalf("bad attach --list JSON %q: %v", out, err)
	}
	return as
}

func hostVeths(ctx context.Context, h *testnet.Host) string {
	out, _ := h.Run(ctx, "ip", "-o", "link", "show", "type", "veth")
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "vmesh") {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

func allocated(t *testing.T, n *node) int {
	t.Helper()
	return n.MustStatus().IPAM.Allocated
}

func pingFrom(ctx context.Context, h *testnet.Host, netns string, to string) error {
	out, err := h.Run(ctx, "nsenter", "--net="+netns, "ping", "-c", "3", "-W", "2", "-i", "0.2", to)
	if err != nil {
		return fmt.Errorf("ping from %s on %s to %s: %v\n%s", netns, h.Name, to, err, out)
	}
	return nil
}

func TestAttachAcrossHosts(t *testing.T) {
	_, nodes, ctx := cniMesh(t, 2, 4*time.Minute)
	a, b := nodes[0], nodes[1]

	// On a: a plain netns, by name.
	if out, err := a.Host.Run(ctx, "ip", "netns", "add", "blue"); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { a.Host.Run(context.Background(), "ip", "netns", "del", "blue") })
	blue, err := meshAttach(ctx, a, "blue")
	if err != nil {
		t.Fatal(err)
	}
	again, err := meshAttach(ctx, a, "/run/netns/blue")
	if err != nil || again.Address != blue.Address || again.ContainerID != blue.ContainerID {
		t.Fatalf("second attach of blue: %+v, %v; want %+v", again, err, blue)
	}
	if n := allocated(t, a); n != 1 {
		t.Fatalf("%s has %d allocations after attaching twice, want 1", a.Host.Name, n)
	}
	if l := attachments(ctx, t, a); len(l) != 1 || l[0].NetNS != "/run/netns/blue" || l[0].IfName != "eth0" || l[0].Address != blue.Address {
		t.Fatalf("attach --list: %+v", l)
	}

	// A runtime's CNI GC lists only its own containers; it must not
	// release the attachment.
	if out, err := runCNI(ctx, t, a.Host, "gc", "mesh", "/run/netns/blue"); err != nil {
		t.Fatalf("CNI GC: %v\n%s", err, out)
	}
	if n := allocated(t, a); n != 1 {
		t.Fatalf("CNI GC released the attachment: %d allocations left, want 1", n)
	}

	// On b: a process in its own netns, by PID.
	sleeper := b.Host.Start(t, "unshare", []string{"--net", "sleep", "600"}, nil)
	procNS := "/proc/" + strconv.Itoa(sleeper.PID()) + "/ns/net"
	var proc api.Attachment
	testnet.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		// unshare has to have run before the namespace is the sleeper's own.
		self, _ := b.Host.Run(ctx, "readlink", "/proc/self/ns/net")
		its, err := b.Host.Run(ctx, "readlink", procNS)
		if err != nil || its == self {
			return fmt.Errorf("process not in its own netns yet: %q, %v", its, err)
		}
		return nil
	})
	if proc, err = meshAttach(ctx, b, strconv.Itoa(sleeper.PID())); err != nil {
		t.Fatal(err)
	}
	if proc.NetNS != procNS {
		t.Fatalf("attachment of PID %d recorded netns %q, want %q", sleeper.PID(), proc.NetNS, procNS)
	}

	blueIP := netip.MustParsePrefix(blue.Address).Addr().String()
	procIP := netip.MustParsePrefix(proc.Address).Addr().String()
	if err := pingFrom(ctx, a.Host, "/run/netns/blue", procIP); err != nil {
		t.Fatal(err)
	}
	if err := pingFrom(ctx, b.Host, procNS, blueIP); err != nil {
		t.Fatal(err)
	}

	// What `mesh status` says of the host: its overlay IP reaches the
	// containers and the containers reach it.
	overlay := a.MustStatus().OverlayIP
	human, err := a.Host.Run(ctx, a.Bin, "status")
	if err != nil || !strings.Contains(human, "Overlay IP:  "+overlay+" on this host's bridge: containers reach this host at "+overlay) {
		t.Fatalf("mesh status lacks the host access hint: %v\n%s", err, human)
	}
	for _, ip := range []string{blueIP, procIP} {
		if out, err := a.Host.Run(ctx, "ping", "-c", "2", "-W", "2", "-i", "0.2", ip); err != nil {
			t.Fatalf("host %s cannot reach container %s: %v\n%s", a.Host.Name, ip, err, out)
		}
	}
	if err := pingFrom(ctx, a.Host, "/run/netns/blue", overlay); err != nil {
		t.Fatalf("container cannot reach its host's overlay IP: %v", err)
	}

	// Detach, twice: the address is free and the veth gone.
	for i := range 2 {
		out, err := a.Host.Run(ctx, a.Bin, "detach", "blue")
		if err != nil {
			t.Fatalf("detach #%d: %v\n%s", i+1, err, out)
		}
		if i == 1 && !strings.Contains(out, "nothing attached") {
			t.Fatalf("second detach said %q, want nothing attached", out)
		}
	}
	if n := allocated(t, a); n != 0 {
		t.Fatalf("%s still has %d allocations after detach", a.Host.Name, n)
	}
	if v := hostVeths(ctx, a.Host); v != "" {
		t.Fatalf("veth left after detach: %s", v)
	}
	if out, _ := a.Host.Run(ctx, "ip", "netns", "exec", "blue", "ip", "-o", "link", "show"); strings.Contains(out, "eth0") {
		t.Fatalf("eth0 left in blue after detach:\n%s", out)
	}
	if l := attachments(ctx, t, a); len(l) != 0 {
		t.Fatalf("attach --list after detach: %+v", l)
	}

	// The process dies without a detach: the daemon's check releases it.
	if err := sleeper.Kill(); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		st, err := b.Status()
		if err != nil {
			return err
		}
		if st.IPAM.Allocated != 0 {
			return fmt.Errorf("%s still has %d allocations after the attached process died", b.Host.Name, st.IPAM.Allocated)
		}
		return nil
	})
	if l := attachments(ctx, t, b); len(l) != 0 {
		t.Fatalf("attach --list after the process died: %+v", l)
	}
	if v := hostVeths(ctx, b.Host); v != "" {
		t.Fatalf("veth left after the process died: %s", v)
	}
}

func TestAttachDaemonDown(t *testing.T) {
	n, ctx := cniNode(t, 3*time.Minute)

	// A namespace that already has a default route (a container with a
	// network of its own) is refused by the plugin; nothing is left.
	setup := "ip netns add routed && ip -n routed link add d0 type veth peer name d1 && ip -n routed link set d0 up && ip -n routed addr add 198.51.100.2/24 dev d0 && ip -n routed route add default via 198.51.100.1"
	if out, err := n.Host.Run(ctx, "sh", "-c", setup); err != nil {
		t.Fatalf("netns with a default route: %v\n%s", err, out)
	}
	t.Cleanup(func() { n.Host.Run(context.Background(), "ip", "netns", "del", "routed") })
	out, err := n.Host.Exec(ctx, n.Bin, "attach", "routed").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "failed to attach") {
		t.Fatalf("attach of a netns with a default route: %v, want a failure\n%s", err, out)
	}
	t.Logf("attach of a netns with a default route: %s", out)
	if got := allocated(t, n); got != 0 {
		t.Fatalf("allocation left after a refused attach: %d", got)
	}
	if v := hostVeths(ctx, n.Host); v != "" {
		t.Fatalf("veth left after a refused attach: %s", v)
	}
	if l := attachments(ctx, t, n); len(l) != 0 {
		t.Fatalf("attachment recorded after a refused attach: %+v", l)
	}

	if err := n.Proc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Host.Run(ctx, "ip", "netns", "add", "lonely"); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { n.Host.Run(context.Background(), "ip", "netns", "del", "lonely") })
	out, err = n.Host.Exec(ctx, n.Bin, "attach", "lonely").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("attach with the daemon down: %v, want exit status 3\n%s", err, out)
	}
	if !strings.Contains(string(out), "cannot reach the mesh daemon") || !strings.Contains(string(out), "is `mesh launch` running?") {
		t.Fatalf("attach with the daemon down says %q, want a clear error", out)
	}
	if links, _ := n.Host.Run(ctx, "ip", "netns", "exec", "lonely", "ip", "-o", "link", "show"); strings.Contains(links, "eth0") {
		t.Fatalf("interface left in the netns:\n%s", links)
	}
	if v := hostVeths(ctx, n.Host); v != "" {
		t.Fatalf("veth left on the host: %s", v)
	}
	n.Start()
	if got := allocated(t, n); got != 0 {
		t.Fatalf("allocation left after a failed attach: %d", got)
	}
	if l := attachments(ctx, t, n); len(l) != 0 {
		t.Fatalf("attachment recorded after a failed attach: %+v", l)
	}
}

// TestAttachAcrossRestart: attachments outlive the daemon, and one whose
// process died while the daemon was down is released when it is back.
func TestAttachAcrossRestart(t *testing.T) {
	n, ctx := cniNode(t, 3*time.Minute)
	if out, err := n.Host.Run(ctx, "ip", "netns", "add", "keep"); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { n.Host.Run(context.Background(), "ip", "netns", "del", "keep") })
	keep, err := meshAttach(ctx, n, "keep")
	if err != nil {
		t.Fatal(err)
	}
	sleeper := n.Host.Start(t, "unshare", []string{"--net", "sleep", "600"}, nil)
	testnet.Eventually(t, 10*time.Second, 100*time.Millisecond, func() error {
		self, _ := n.Host.Run(ctx, "readlink", "/proc/self/ns/net")
		its, err := n.Host.Run(ctx, "readlink", "/proc/"+strconv.Itoa(sleeper.PID())+"/ns/net")
		if err != nil || its == self {
			return fmt.Errorf("process not in its own netns yet: %q, %v", its, err)
		}
		return nil
	})
	if _, err := meshAttach(ctx, n, strconv.Itoa(sleeper.PID())); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(n.Host.Path("/var/lib/mesh/attachments.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("attachments file: %v, %v; want mode 0600", fi, err)
	}

	if err := n.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := sleeper.Kill(); err != nil {
		t.Fatal(err)
	}
	n.Start()
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.IPAM.Status != "ready" || st.IPAM.Allocated != 1 {
			return fmt.Errorf("after restart: IPAM %s with %d allocations, want ready with 1 (the live attachment)", st.IPAM.Status, st.IPAM.Allocated)
		}
		return nil
	})
	l := attachments(ctx, t, n)
	if len(l) != 1 || l[0].NetNS != "/run/netns/keep" || l[0].Address != keep.Address {
		t.Fatalf("attachments after restart: %+v, want only %+v", l, keep)
	}
	// The human forms: attach prints the address, --list a table.
	if out, err := n.Host.Run(ctx, n.Bin, "attach", "keep"); err != nil || strings.TrimSpace(out) != keep.Address {
		t.Fatalf("attach after restart printed %q, %v; want %s", out, err, keep.Address)
	}
	if out, err := n.Host.Run(ctx, n.Bin, "attach", "--list"); err != nil || !strings.Contains(out, "NETNS") || !strings.Contains(out, "/run/netns/keep") || !strings.Contains(out, keep.Address) {
		t.Fatalf("attach --list printed %q, %v", out, err)
	}
	if err := pingFrom(ctx, n.Host, "/run/netns/keep", n.MustStatus().OverlayIP); err != nil {
		t.Fatalf("the attachment lost its connectivity across the restart: %v", err)
	}
}

// TestAttachDualStack: on dual-stack hosts an attachment gets an address
// of each family, recorded and shown by `mesh attach` (its JSON and
// --list) and reachable across hosts over both; `mesh status` and `mesh
// status ipam -o json` show both families' ranges and free/used counts;
// detach, and the namespace's deletion, release both families.
func TestAttachDualStack(t *testing.T) {
	_, nodes, ctx := cniMesh(t, 2, 4*time.Minute, dualFlags...)
	a, b := nodes[0], nodes[1]
	var att []api.Attachment
	for _, x := range []struct {
		n    *node
		name string
	}{{a, "blue"}, {b, "green"}} {
		if out, err := x.n.Host.Run(ctx, "ip", "netns", "add", x.name); err != nil {
			t.Fatalf("ip netns add: %v\n%s", err, out)
		}
		t.Cleanup(func() { x.n.Host.Run(context.Background(), "ip", "netns", "del", x.name) })
		at, err := meshAttach(ctx, x.n, x.name)
		if err != nil {
			t.Fatal(err)
		}
		p4, err4 := netip.ParsePrefix(at.Address)
		p6, err6 := netip.ParsePrefix(at.Address6)
		gw6 := x.n.MustStatus().OverlayIP6
		if err4 != nil || err6 != nil || !p4.Addr().Is4() || !p6.Addr().Is6() || !netip.MustParsePrefix(dualRange6).Contains(p6.Addr()) || at.Gateway6 != gw6 {
			t.Fatalf("attach on %s: %+v; want an IPv4 address, an IPv6 one in %s and the IPv6 gateway %s", x.n.Host.Name, at, dualRange6, gw6)
		}
		st := x.n.MustStatus()
		if st.IPAM.Allocated != 1 || st.IPAM6.Allocated != 1 {
			t.Fatalf("%s: %d IPv4 and %d IPv6 allocations after one attach, want 1 of each", x.n.Host.Name, st.IPAM.Allocated, st.IPAM6.Allocated)
		}
		att = append(att, at)
	}

	// Recorded with both: --list in JSON and as a table, and attaching
	// again returns both.
	if l := attachments(ctx, t, a); len(l) != 1 || l[0].Address != att[0].Address || l[0].Address6 != att[0].Address6 || l[0].Gateway6 != att[0].Gateway6 {
		t.Fatalf("attach --list -o json: %+v, want [%+v]", l, att[0])
	}
	if out, err := a.Host.Run(ctx, a.Bin, "attach", "--list"); err != nil || !strings.Contains(out, "IPV6") || !strings.Contains(out, att[0].Address6) {
		t.Fatalf("attach --list printed %q, %v; want the IPv6 address %s", out, err, att[0].Address6)
	}
	if out, err := a.Host.Run(ctx, a.Bin, "attach", "blue"); err != nil || strings.TrimSpace(out) != att[0].Address+" "+att[0].Address6 {
		t.Fatalf("attach again printed %q, %v; want %s %s", out, err, att[0].Address, att[0].Address6)
	}

	// Both families across hosts.
	for _, to := range []string{att[1].Address, att[1].Address6} {
		if err := pingFrom(ctx, a.Host, "/run/netns/blue", netip.MustParsePrefix(to).Addr().String()); err != nil {
			t.Fatal(err)
		}
	}

	// Status shows both families: the overview and the IPAM section.
	human, err := a.Host.Run(ctx, a.Bin, "status")
	if err != nil || !strings.Contains(human, "IPAM IPv6:") || !strings.Contains(human, "range "+dualRange6) || !strings.Contains(human, "1 allocated") {
		t.Fatalf("mesh status lacks the IPv6 IPAM: %v\n%s", err, human)
	}
	out, err := a.Host.Run(ctx, a.Bin, "status", "ipam", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var sec api.IPAMSections
	if err := json.Unmarshal([]byte(out), &sec); err != nil || sec.IPAM == nil || sec.IPAM6 == nil {
		t.Fatalf("mesh status ipam -o json: %v\n%s", err, out)
	}
	for _, x := range []struct {
		ip     *api.IPAM
		family string
	}{{sec.IPAM, dualRange4}, {sec.IPAM6, dualRange6}} {
		if x.ip.Range != x.family || x.ip.Allocated != 1 || x.ip.Free == 0 || len(x.ip.Owned) == 0 || len(x.ip.Ranges) == 0 {
			t.Fatalf("mesh status ipam -o json, range %s: %+v; want 1 allocated, free space, owned ranges", x.family, x.ip)
		}
	}
	if sec.IPAM6.Free <= sec.IPAM.Free {
		t.Errorf("IPv6 free %d not above IPv4 free %d: the IPv6 count looks truncated", sec.IPAM6.Free, sec.IPAM.Free)
	}

	// Detach releases both families.
	if out, err := a.Host.Run(ctx, a.Bin, "detach", "blue"); err != nil || !strings.Contains(out, att[0].Address6) {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	if st := a.MustStatus(); st.IPAM.Allocated != 0 || st.IPAM6.Allocated != 0 {
		t.Fatalf("%s after detach: %d IPv4 and %d IPv6 allocations, want none", a.Host.Name, st.IPAM.Allocated, st.IPAM6.Allocated)
	}
	if l := attachments(ctx, t, a); len(l) != 0 {
		t.Fatalf("attach --list after detach: %+v", l)
	}

	// The namespace goes without a detach: the daemon's check releases both.
	if out, err := b.Host.Run(ctx, "ip", "netns", "del", "green"); err != nil {
		t.Fatalf("ip netns del: %v\n%s", err, out)
	}
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error {
		st, err := b.Status()
		if err != nil {
			return err
		}
		if st.IPAM.Allocated != 0 || st.IPAM6.Allocated != 0 {
			return fmt.Errorf("%s: %d IPv4 and %d IPv6 allocations after the namespace was deleted, want none", b.Host.Name, st.IPAM.Allocated, st.IPAM6.Allocated)
		}
		return nil
	})
	if v := hostVeths(ctx, b.Host); v != "" {
		t.Fatalf("veth left after the namespace was deleted: %s", v)
	}
}
