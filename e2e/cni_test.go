package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

func cnitool(t *testing.T) string {
	return testnet.BuildBinary(t, "github.com/containernetworking/cni/cnitool")
}

// pod is a network namespace on a simulated host wired by the real
// mesh-cni through the real cnitool, as a container runtime would.
type pod struct {
	Host *testnet.Host
	name string
	ip   netip.Addr
}

func runCNI(ctx context.Context, t *testing.T, h *testnet.Host, args ...string) (string, error) {
	all := append([]string{"CNI_PATH=/opt/cni/bin", "NETCONFPATH=/etc/cni/net.d", cnitool(t)}, args...)
	return h.Run(ctx, "env", all...)
}

// podOnEach waits for mesh-cni on every node and adds one pod to each,
// named prefix1, prefix2, ...; no two may get the same address.
func podOnEach(ctx context.Context, t *testing.T, nodes []*node, prefix string) []*pod {
	t.Helper()
	for _, n := range nodes {
		waitCNIInstalled(t, n)
	}
	var pods []*pod
	seen := map[netip.Addr]string{}
	for i, n := range nodes {
		p, err := addPod(ctx, t, n.Host, fmt.Sprintf("%s%d", prefix, i+1))
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[p.ip]; dup {
			t.Fatalf("%s and %s both got %s", other, p.name, p.ip)
		}
		seen[p.ip] = p.name
		pods = append(pods, p)
	}
	return pods
}

func addPod(ctx context.Context, t *testing.T, h *testnet.Host, name string) (*pod, error) {
	if out, err := h.Run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	out, err := runCNI(ctx, t, h, "add", "mesh", "/run/netns/"+name)
	if err != nil {
		return nil, fmt.Errorf("cnitool add on %s: %v\n%s", h.Name, err, out)
	}
	ip, err := meshtest.ADDResultAddr(out)
	if err != nil {
		return nil, err
	}
	return &pod{Host: h, name: name, ip: ip}, nil
}

func (p *pod) exec(ctx context.Context, args ...string) (string, error) {
	return p.Host.Run(ctx, "ip", append([]string{"netns", "exec", p.name}, args...)...)
}

func TestCNIPodsAcrossHosts(t *testing.T) {
	_, nodes, ctx := cniMesh(t, 2, 3*time.Minute)
	a, err := addPod(ctx, t, nodes[0].Host, "poda")
	if err != nil {
		t.Fatal(err)
	}
	b, err := addPod(ctx, t, nodes[1].Host, "podb")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if st := n.MustStatus(); st.IPAM.Allocated != 1 {
			t.Fatalf("%s has %d allocations, want 1", n.Host.Name, st.IPAM.Allocated)
		}
	}
	if out, err := a.exec(ctx, "ping", "-c", "3", "-W", "2", "-i", "0.2", b.ip.String()); err != nil {
		t.Fatalf("pod a cannot ping pod b across hosts: %v\n%s", err, out)
	}
	if out, err := b.exec(ctx, "ping", "-c", "3", "-W", "2", "-i", "0.2", a.ip.String()); err != nil {
		t.Fatalf("pod b cannot ping pod a across hosts: %v\n%s", err, out)
	}

	if out, err := runCNI(ctx, t, a.Host, "check", "mesh", "/run/netns/poda"); err != nil {
		t.Fatalf("CHECK of a healthy pod failed: %v\n%s", err, out)
	}
	if out, err := a.exec(ctx, "ip", "addr", "del", a.ip.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatalf("removing the pod address: %v\n%s", err, out)
	}
	out, err := runCNI(ctx, t, a.Host, "check", "mesh", "/run/netns/poda")
	if err == nil || !strings.Contains(out, a.ip.String()) {
		t.Fatalf("CHECK after removing the address: err=%v, want an error naming %s\n%s", err, a.ip, out)
	}
	for i := range 2 {
		if out, err := runCNI(ctx, t, a.Host, "del", "mesh", "/run/netns/poda"); err != nil {
			t.Fatalf("DEL #%d failed: %v\n%s", i+1, err, out)
		}
	}
	links, _ := a.Host.Run(ctx, "ip", "-o", "link", "show")
	if strings.Contains(links, "vmesh") {
		t.Fatalf("veth left behind after DEL:\n%s", links)
	}
	if st := nodes[0].MustStatus(); st.IPAM.Allocated != 0 {
		t.Fatalf("allocation left behind after DEL: %d", st.IPAM.Allocated)
	}
}

func TestCNIParallelAddsAndGC(t *testing.T) {
	n, ctx := cniNode(t, 3*time.Minute)
	const pods = 30
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	var wg sync.WaitGroup
	errs := make(chan error, pods)
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := addPod(ctx, t, n.Host, fmt.Sprintf("p%d", i))
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := got[p.ip]; dup {
				errs <- fmt.Errorf("%s handed to both %s and %s", p.ip, other, p.name)
			}
			got[p.ip] = p.name
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := n.MustStatus()
	var owned []netip.Prefix
	for _, c := range st.IPAM.Owned {
		owned = append(owned, netip.MustParsePrefix(c))
	}
	overlay := netip.MustParseAddr(st.OverlayIP)
	for ip := range got {
		if ip == overlay {
			t.Fatalf("the overlay IP %s was handed to a pod", ip)
		}
		in := false
		for _, p := range owned {
			in = in || p.Contains(ip)
		}
		if !in {
			t.Fatalf("%s is outside the node's ranges %v", ip, owned)
		}
	}
	if st.IPAM.Allocated != pods {
		t.Fatalf("allocated = %d, want %d", st.IPAM.Allocated, pods)
	}
	if out, err := runCNI(ctx, t, n.Host, "gc", "mesh", "/run/netns/p0"); err != nil {
		t.Fatalf("GC: %v\n%s", err, out)
	}
	if st := n.MustStatus(); st.IPAM.Allocated != 0 {
		t.Fatalf("GC with no valid attachments left %d allocations", st.IPAM.Allocated)
	}
}

func TestCNIDaemonRestartKeepsAddresses(t *testing.T) {
	n, ctx := cniNode(t, 3*time.Minute)
	var before []*pod
	for i := range 3 {
		p, err := addPod(ctx, t, n.Host, fmt.Sprintf("keep%d", i))
		if err != nil {
			t.Fatal(err)
		}
		before = append(before, p)
	}
	if err := n.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	n.Start()
	testnet.Eventually(t, 60*time.Second, 250*time.Millisecond, func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.IPAM.Status != "ready" || st.IPAM.Allocated != len(before) {
			return fmt.Errorf("after restart: %+v", st.IPAM)
		}
		return nil
	})
	// ADD for the same container returns the same address; a new pod gets
	// a new one.
	for _, p := range before {
		out, err := runCNI(ctx, t, n.Host, "check", "mesh", "/run/netns/"+p.name)
		if err != nil {
			t.Fatalf("CHECK of %s after restart: %v\n%s", p.name, err, out)
		}
	}
	fresh, err := addPod(ctx, t, n.Host, "fresh")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range before {
		if p.ip == fresh.ip {
			t.Fatalf("%s reused the live address %s of %s", fresh.name, p.ip, p.name)
		}
	}
	if out, err := fresh.exec(ctx, "ping", "-c", "1", "-W", "2", n.MustStatus().OverlayIP); err != nil {
		t.Fatalf("pod cannot reach its gateway after restart: %v\n%s", err, out)
	}
}
