package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func TestTargetPath(t *testing.T) {
	cwd, _ := os.Getwd()
	tests := []struct {
		name, target, want, err string
	}{
		{"pid", "1234", "/proc/1234/ns/net", ""},
		{"netns name", "blue", "/run/netns/blue", ""},
		{"absolute path", "/var/run/netns/cni-1", "/var/run/netns/cni-1", ""},
		{"path cleaned", "/run/netns/../netns/x", "/run/netns/x", ""},
		{"relative path", "./ns/x", filepath.Join(cwd, "ns/x"), ""},
		{"empty", "", "", "empty attach target"},
		{"zero pid", "0", "", "invalid PID"},
		{"dot name", "..", "", "invalid netns name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := TargetPath(tt.target)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("TargetPath(%q) = %q, %v; want error %q", tt.target, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("TargetPath(%q) = %q, %v; want %q", tt.target, got, err, tt.want)
			}
		})
	}
}

func TestStatNS(t *testing.T) {
	self, err := StatNS("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("own netns: %v", err)
	}
	if again, err := StatNS(fmt.Sprintf("/proc/%d/ns/net", os.Getpid())); err != nil || again != self {
		t.Fatalf("same netns by PID: %+v, %v; want %+v", again, err, self)
	}
	plain := filepath.Join(t.TempDir(), "file")
	os.WriteFile(plain, nil, 0o644)
	tests := []struct {
		name, path string
		want       error
	}{
		{"missing", "/proc/999999999/ns/net", os.ErrNotExist},
		{"plain file", plain, ErrNotNetNS},
		{"mount namespace", "/proc/self/ns/mnt", ErrNotNetNS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := StatNS(tt.path); !errors.Is(err, tt.want) {
				t.Fatalf("StatNS(%q) = %v, want %v", tt.path, err, tt.want)
			}
		})
	}
}

// fakePlugin records the CNI calls; the Manager's bookkeeping is pure
// logic, the real plugin is exercised by the e2e tests.
type fakePlugin struct {
	adds, dels []string
	addErr     error
	delErr     error
}

// fakeAddrs is what the fake ADD wires: a dual-stack attachment.
var fakeAddrs = Addresses{Address: "10.32.0.7/32", Gateway: "10.32.0.1", Address6: "fd32::7/128", Gateway6: "fd32::1"}

func (f *fakePlugin) Add(_ context.Context, id, ifName, netns string) (Addresses, error) {
	f.adds = append(f.adds, id+"/"+ifName+"@"+netns)
	if f.addErr != nil {
		return Addresses{}, f.addErr
	}
	return fakeAddrs, nil
}

func (f *fakePlugin) Del(_ context.Context, id, ifName, netns string) error {
	f.dels = append(f.dels, id+"/"+ifName+"@"+netns)
	return f.delErr
}

func newTestManager(t *testing.T, p Plugin) (*Manager, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "attachments.json")
	m, err := NewManager(file, p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// The tests attach their own namespace, which is the "host's" here.
	m.hostNS = NSID{}
	return m, file
}

func TestAttachIdempotentAndPersisted(t *testing.T) {
	p := &fakePlugin{}
	m, file := newTestManager(t, p)
	ctx := context.Background()
	a, err := m.Attach(ctx, "/proc/self/ns/net", "eth0")
	if err != nil || a.Addresses != fakeAddrs {
		t.Fatalf("attach: %+v, %v", a, err)
	}
	pid := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	b, err := m.Attach(ctx, pid, "eth0")
	if err != nil || b.ContainerID != a.ContainerID || b.Address != a.Address {
		t.Fatalf("second attach of the same namespace: %+v, %v; want %+v", b, err, a)
	}
	if len(p.adds) != 1 {
		t.Fatalf("ADD ran %d times, want once: %v", len(p.adds), p.adds)
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("attachments file: %v, %v; want mode 0600", fi, err)
	}
	reloaded, err := NewManager(file, p, m.log)
	if err != nil || len(reloaded.List()) != 1 || reloaded.List()[0] != a {
		t.Fatalf("reloaded: %+v, %v; want [%+v]", reloaded.List(), err, a)
	}
	if _, err := m.Attach(ctx, "/proc/self/ns/net", "a/b"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad interface name: %v, want ErrInvalid", err)
	}
	if _, err := m.Attach(ctx, "/nonexistent/ns", "eth0"); !errors.Is(err, ErrInvalid) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing netns: %v, want ErrInvalid and ErrNotExist", err)
	}
	if len(p.adds) != 1 {
		t.Fatalf("a refused attach ran ADD: %v", p.adds)
	}

	got, err := m.Detach(ctx, "/proc/self/ns/net", "")
	if err != nil || len(got) != 1 || len(m.List()) != 0 {
		t.Fatalf("detach: %+v, %v; left %+v", got, err, m.List())
	}
	if p.dels[0] != a.ContainerID+"/eth0@/proc/self/ns/net" {
		t.Fatalf("DEL of a live namespace without its path: %v", p.dels)
	}
	got, err = m.Detach(ctx, "/proc/self/ns/net", "")
	if err != nil || len(got) != 0 || len(p.dels) != 1 {
		t.Fatalf("second detach: %+v, %v, DELs %v", got, err, p.dels)
	}
}

func TestAttachFailureLeavesNothing(t *testing.T) {
	p := &fakePlugin{addErr: errors.New("daemon not ready")}
	m, file := newTestManager(t, p)
	if _, err := m.Attach(context.Background(), "/proc/self/ns/net", "eth0"); err == nil {
		t.Fatal("attach succeeded with a failing ADD")
	}
	if len(p.dels) != 1 || len(m.List()) != 0 {
		t.Fatalf("after a failed ADD: DELs %v, records %+v; want one rollback DEL, no record", p.dels, m.List())
	}
	if recs, err := loadRecords(file); err != nil || len(recs) != 0 {
		t.Fatalf("file after a failed ADD: %+v, %v", recs, err)
	}

	// A rollback that fails too keeps a pending record for Check.
	p.delErr = errors.New("still down")
	if _, err := m.Attach(context.Background(), "/proc/self/ns/net", "eth0"); err == nil || !strings.Contains(err.Error(), "rollback failed") {
		t.Fatalf("attach with failing rollback: %v", err)
	}
	if l := m.List(); len(l) != 1 || l[0].Address != "" {
		t.Fatalf("want one pending record, got %+v", l)
	}
	p.delErr = nil
	if rel := m.Check(context.Background()); len(rel) != 1 || len(m.List()) != 0 {
		t.Fatalf("Check of a pending record: released %+v, left %+v", rel, m.List())
	}
	if last := p.dels[len(p.dels)-1]; !strings.HasSuffix(last, "@/proc/self/ns/net") {
		t.Fatalf("pending record of a live namespace rolled back without its path: %v", p.dels)
	}
}

func TestCheckReleasesGoneNamespaces(t *testing.T) {
	p := &fakePlugin{}
	m, _ := newTestManager(t, p)
	ctx := context.Background()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	procNS := fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
	if _, err := m.Attach(ctx, procNS, "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, "/proc/self/ns/net", "eth1"); err != nil {
		t.Fatal(err)
	}
	if rel := m.Check(ctx); len(rel) != 0 {
		t.Fatalf("Check released live attachments: %+v", rel)
	}
	cmd.Process.Kill()
	cmd.Wait()
	p.delErr = errors.New("daemon busy")
	if rel := m.Check(ctx); len(rel) != 0 || len(m.List()) != 2 {
		t.Fatalf("a failed release dropped the record: released %+v, left %+v", rel, m.List())
	}
	p.delErr = nil
	rel := m.Check(ctx)
	if len(rel) != 1 || rel[0].NetNS != procNS || len(m.List()) != 1 {
		t.Fatalf("Check after the process died: released %+v, left %+v", rel, m.List())
	}
	if last := p.dels[len(p.dels)-1]; !strings.HasSuffix(last, "/eth0@") {
		t.Fatalf("DEL of a gone namespace must not name a path: %v", p.dels)
	}
}

func TestCheckReleasesReplacedNamespace(t *testing.T) {
	// A path that now refers to another namespace (a reused PID) is gone.
	p := &fakePlugin{}
	m, file := newTestManager(t, p)
	self, _ := StatNS("/proc/self/ns/net")
	stale := Record{ContainerID: "mesh-attach-1-2", IfName: "eth0", NetNS: "/proc/self/ns/net", NS: NSID{Dev: self.Dev, Ino: self.Ino + 1}, Addresses: Addresses{Address: "10.32.0.9/32"}}
	if err := saveRecords(file, []Record{stale}); err != nil {
		t.Fatal(err)
	}
	m, _ = NewManager(file, p, m.log)
	m.hostNS = NSID{}
	if rel := m.Check(context.Background()); len(rel) != 1 || len(m.List()) != 0 {
		t.Fatalf("replaced namespace: released %+v, left %+v", rel, m.List())
	}
}

func TestLoadRecordsRefusesUnknownVersion(t *testing.T) {
	file := filepath.Join(t.TempDir(), "attachments.json")
	os.WriteFile(file, []byte(`{"version": 2, "attachments": []}`), 0o600)
	if _, err := loadRecords(file); err == nil || !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("loadRecords of a newer file: %v", err)
	}
	os.WriteFile(file, []byte(`{`), 0o600)
	if _, err := loadRecords(file); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("loadRecords of a corrupt file: %v", err)
	}
}

func TestAttachRefusesHostNamespace(t *testing.T) {
	p := &fakePlugin{}
	m, err := NewManager(filepath.Join(t.TempDir(), "attachments.json"), p, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"/proc/self/ns/net", fmt.Sprintf("/proc/%d/ns/net", os.Getpid())} {
		if _, err := m.Attach(context.Background(), ns, "mesh0"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "host's own") {
			t.Fatalf("attach of the host netns %s: %v, want refused", ns, err)
		}
	}
	if len(p.adds) != 0 || len(m.List()) != 0 {
		t.Fatalf("refused attach ran ADD %v or left %+v", p.adds, m.List())
	}
}

func TestResultAddresses(t *testing.T) {
	ip := func(addr, gw string) *types100.IPConfig {
		c := &types100.IPConfig{}
		p, err := types.ParseCIDR(addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Address = *p
		if gw != "" {
			c.Gateway = net.ParseIP(gw)
		}
		return c
	}
	tests := []struct {
		name string
		ips  []*types100.IPConfig
		want Addresses
	}{
		{"IPv4 only", []*types100.IPConfig{ip("10.32.0.7/32", "10.32.0.1")},
			Addresses{Address: "10.32.0.7/32", Gateway: "10.32.0.1"}},
		{"dual-stack", []*types100.IPConfig{ip("10.32.0.7/32", "10.32.0.1"), ip("fd32::7/128", "fd32::1")},
			fakeAddrs},
		{"IPv6 listed first", []*types100.IPConfig{ip("fd32::7/128", "fd32::1"), ip("10.32.0.7/32", "10.32.0.1")},
			fakeAddrs},
		{"IPv6 only", []*types100.IPConfig{ip("fd32::7/128", "fd32::1")},
			Addresses{Address: "fd32::7/128", Gateway: "fd32::1"}},
		{"no gateway", []*types100.IPConfig{ip("10.32.0.7/32", "")},
			Addresses{Address: "10.32.0.7/32"}},
		{"none", nil, Addresses{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resultAddresses(&types100.Result{IPs: tt.ips}); got != tt.want {
				t.Fatalf("resultAddresses = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestRecordsWithoutIPv6Load: a file written before attachments recorded
// IPv6 addresses (same storeVersion) loads, its records IPv4 only.
func TestRecordsWithoutIPv6Load(t *testing.T) {
	file := filepath.Join(t.TempDir(), "attachments.json")
	old := `{"version": 1, "attachments": [{"containerID": "mesh-attach-4-f0000abc", "ifName": "eth0", "netns": "/run/netns/blue",
	  "ns": {"dev": 4, "ino": 4026532000}, "address": "10.32.0.7/32", "gateway": "10.32.0.1", "created": "2026-01-02T03:04:05Z"}]}`
	if err := os.WriteFile(file, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := loadRecords(file)
	if err != nil || len(recs) != 1 {
		t.Fatalf("loadRecords: %+v, %v", recs, err)
	}
	if want := (Addresses{Address: "10.32.0.7/32", Gateway: "10.32.0.1"}); recs[0].Addresses != want {
		t.Fatalf("old record's addresses %+v, want %+v", recs[0].Addresses, want)
	}
}
