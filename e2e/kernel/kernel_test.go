//go:build e2ekernel

package kernele2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
	"github.com/meshnet/mesh/internal/vmtest"
)

// Bounds. The whole run is measured in docs/architecture.md; these leave
// room for a loaded machine.
const (
	// A kernel that boots under KVM prints within a second; where KVM
	// opens but the CPU has no virtualization, the guest hangs silently.
	kvmProbeTimeout = 15 * time.Second
	tcgProbeTimeout = 3 * time.Minute
	vmTimeout       = 30 * time.Minute
	buildTimeout    = 10 * time.Minute
)

// vmPrograms are the machine's tools that the in-VM tests and
// internal/testnet run, copied with their libraries.
var vmPrograms = []string{"ip", "nsenter", "unshare", "mount", "umount", "nft", "ping"}

// vmModules are loaded at boot: the data planes (wireguard; tun for the
// userspace peers), what testnet and mesh-cni wire hosts and pods with
// (veth, bridge) and nftables, which `mesh reset` and the NetworkPolicy
// controller talk to. Their dependencies come along. crc32c_generic is the
// "crc32c" that libcrc32c (needed by nf_tables) asks the crypto API for at
// load time, a soft dependency that .modinfo names by alias only. The
// nftables expressions and families the daemon's own tables use (named
// counters, NAT and masquerade, conntrack, the bridge family of the
// port-isolation table) are modules in a stock kernel, and the netlink
// conntrack interface flushes a released address's entries.
var vmModules = []string{"wireguard", "tun", "veth", "bridge", "crc32c_generic", "nf_tables",
	"nft_objref", "nft_ct", "nft_chain_nat", "nft_nat", "nft_masq", "nft_reject", "nft_reject_inet",
	"nft_meta_bridge", "nf_conntrack_netlink"}

func setting(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// cannotRun reports, in one line, that this machine cannot run the VM:
// a skip, or a failure under CI=true, where nothing may skip.
func cannotRun(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := "e2e-kernel: this machine cannot run the test VM: " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func TestKernelVM(t *testing.T) {
	testnet.RequireRoot(t)
	for _, p := range append([]string{vmtest.QEMU, "busybox", "ldd", "apt-get", "dpkg"}, vmPrograms...) {
		if _, err := exec.LookPath(p); err != nil {
			cannotRun(t, "%s is missing (run ./scripts/deps.sh kernel)", p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout+buildTimeout+2*tcgProbeTimeout)
	defer cancel()
	start := time.Now()
	work := t.TempDir()

	k, err := vmtest.FetchKernel(ctx, setting("MESH_E2E_CACHE", "/var/cache/mesh-e2e"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel: %s %s (%s)", k.Package, k.Version, k.Release)

	// The accelerator: KVM only where a VM really boots with it.
	probe := filepath.Join(work, "probe.cpio")
	if err := (&vmtest.Image{Kernel: k}).Build(ctx, probe); err != nil {
		t.Fatal(err)
	}
	accel := os.Getenv("MESH_E2E_ACCEL")
	if accel == "" {
		var why string
		accel, why, err = vmtest.ProbeAccel(ctx, k.Vmlinuz(), probe, work, kvmProbeTimeout, tcgProbeTimeout)
		if errors.Is(err, vmtest.ErrNoVM) {
			cannotRun(t, "%s", strings.TrimPrefix(err.Error(), vmtest.ErrNoVM.Error()+": "))
		}
		if err != nil {
			t.Fatal(err)
		}
		if why != "" {
			t.Logf("accelerator %s (%s)", accel, why)
		}
	}
	t.Logf("accelerator: %s, probed in %v", accel, time.Since(start).Round(time.Second))

	// The binaries, all static: make build's, cnitool and the in-VM tests.
	bins := testnet.BuildMake(t)
	files := map[string]string{}
	for _, name := range testnet.MakeBuildOutputs {
		files["/e2e/bin/"+name] = filepath.Join(bins, name)
	}
	files["/e2e/bin/cnitool"] = goBuild(ctx, t, work, "cnitool", "build", "github.com/containernetworking/cni/cnitool")
	files["/e2e/bin/vm.test"] = goBuild(ctx, t, work, "vm.test", "test", "-c", "-tags", "kernelvm", "./vm")

	run := setting("MESH_E2E_KERNEL_RUN", ".")
	env := []string{
		"CI=" + os.Getenv("CI"),
		meshtest.BinDirEnv + "=/e2e/bin",
	}
	script := "#!/bin/sh\nexport " + strings.Join(env, " ") + "\ncd /e2e/bin\n" +
		fmt.Sprintf("exec ./vm.test -test.v -test.count=1 -test.timeout=%s -test.run '%s'\n", (vmTimeout-time.Minute).String(), run)
	img := &vmtest.Image{Kernel: k, Modules: vmModules, Programs: vmPrograms, Files: files, Script: script}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := img.Build(ctx, initrd); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(initrd); err == nil {
		t.Logf("initramfs: %d MiB, built %v after the start", fi.Size()>>20, time.Since(start).Round(time.Second))
	}

	vctx, vcancel := context.WithTimeout(ctx, vmTimeout)
	defer vcancel()
	vm := &vmtest.VM{Kernel: k.Vmlinuz(), Initrd: initrd, Accel: accel, Dir: filepath.Join(work, "vm"),
		Follow: func(l string) { t.Log("vm: " + l) }}
	res, err := vm.Run(vctx)
	if res != nil {
		t.Logf("VM ran %v (%s); whole test %v", res.Duration.Round(time.Second), accel, time.Since(start).Round(time.Second))
	}
	if err != nil || !res.Up || res.Exit != 0 {
		console := ""
		if res != nil {
			console = res.Console
		}
		t.Fatalf("VM run failed: err=%v result=%s\nkernel console (tail):\n%s", err, summary(res), tail(console, 60))
	}
	checkRan(t, res.Output)
}

func summary(r *vmtest.Result) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("up=%v exit=%d %s", r.Up, r.Exit, r.Reason)
}

// goBuild builds a static binary (CGO_ENABLED=0: the VM has no libc for it).
func goBuild(ctx context.Context, t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	args = append(args[:1], append([]string{"-o", out}, args[1:]...)...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, o)
	}
	return out
}

var passRE = regexp.MustCompile(`(?m)^--- PASS: (\S+)`)

// checkRan fails unless the in-VM run passed at least one test: an exit
// status of 0 with no test run proves nothing.
func checkRan(t *testing.T, out string) {
	t.Helper()
	if strings.Contains(out, "testing: warning: no tests to run") {
		t.Fatalf("the VM ran no test (MESH_E2E_KERNEL_RUN=%q)", os.Getenv("MESH_E2E_KERNEL_RUN"))
	}
	var passed []string
	for _, m := range passRE.FindAllStringSubmatch(out, -1) {
		passed = append(passed, m[1])
	}
	if len(passed) == 0 {
		t.Fatal("the VM reported success but no passing test")
	}
	t.Logf("passed in the VM: %s", strings.Join(passed, ", "))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestProbeNoVM: when no accelerator boots a VM (here: a kernel image that
// is not one), the probe says so with ErrNoVM, the error TestKernelVM turns
// into its one-line "cannot run" report, rather than hanging or passing.
func TestProbeNoVM(t *testing.T) {
	if _, err := exec.LookPath(vmtest.QEMU); err != nil {
		cannotRun(t, "%s is missing (run ./scripts/deps.sh kernel)", vmtest.QEMU)
	}
	dir := t.TempDir()
	bogus := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(bogus, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrd, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	accel, why, err := vmtest.ProbeAccel(ctx, bogus, initrd, dir, 10*time.Second, 10*time.Second)
	if !errors.Is(err, vmtest.ErrNoVM) {
		t.Fatalf("ProbeAccel with no bootable kernel = %q, %q, %v; want ErrNoVM", accel, why, err)
	}
	t.Logf("in %v: %v", time.Since(start).Round(time.Millisecond), err)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := testnet.RemoveBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}
