package vmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// QEMU is the emulator binary, from Debian's qemu-system-x86.
const QEMU = "qemu-system-x86_64"

// Accelerators.
const (
	AccelKVM = "kvm"
	// AccelTCG is plain emulation: slow but needs nothing of the CPU.
	AccelTCG = "tcg"
)

// Markers the VM's init writes to the output port, one per line.
const (
	// MarkUp is written once the modules are loaded, followed by the
	// kernel release.
	MarkUp = "MESH-VM-UP"
	// MarkExit is followed by the test binary's exit status (125 when init
	// itself failed, with the reason after it).
	MarkExit = "MESH-VM-EXIT"
)

// VM is how to boot one virtual machine.
type VM struct {
	Kernel string // the bzImage
	Initrd string // the initramfs (newc cpio)
	Accel  string // AccelKVM or AccelTCG
	// MemoryMiB and CPUs size the VM; 0 means 2048 and 2.
	MemoryMiB, CPUs int
	// Dir receives console.log (the kernel's console, ttyS0) and out.log
	// (what init and the tests write to ttyS1).
	Dir string
	// Follow, when set, gets every line of out.log as it is written.
	Follow func(line string)
}

// Result is what a VM run produced.
type Result struct {
	Up       bool   // init wrote MarkUp: the kernel booted and the modules loaded
	Exit     int    // the status after MarkExit; -1 when there was none
	Reason   string // what init wrote after the status, if anything
	Console  string // the kernel console
	Output   string // the output port
	Duration time.Duration
}

func (v *VM) args() []string {
	mem, cpus := v.MemoryMiB, v.CPUs
	if mem == 0 {
		mem = 2048
	}
	if cpus == 0 {
		cpus = 2
	}
	accel, cpu := "kvm", "host"
	if v.Accel != AccelKVM {
		// Multi-threaded TCG uses both vCPUs; "max" gives the guest every
		// feature TCG emulates (e.g. RDRAND for an early entropy pool).
		accel, cpu = "tcg,thread=multi", "max"
	}
	return []string{
		"-machine", "q35", "-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		// No network device, no disk, no display: nothing leaves the VM;
		// the tests use network namespaces inside it.
		"-nodefaults", "-no-user-config", "-nographic", "-nic", "none",
		"-no-reboot",
		"-kernel", v.Kernel, "-initrd", v.Initrd,
		// panic=-1 reboots at once on a panic, which -no-reboot turns
		// into QEMU exiting: a crashed kernel ends the run.
		"-append", "console=ttyS0 panic=-1 oops=panic loglevel=4 random.trust_cpu=on rdinit=/init",
		"-serial", "file:" + filepath.Join(v.Dir, "console.log"),
		"-serial", "file:" + filepath.Join(v.Dir, "out.log"),
	}
}

// Run boots the VM and waits until it powers off or ctx is done, in which
// case QEMU is killed (by its PID) and the result so far is returned with
// ctx's error.
func (v *VM) Run(ctx context.Context) (*Result, error) {
	if err := os.MkdirAll(v.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("failed to create VM directory %q: %w", v.Dir, err)
	}
	outPath := filepath.Join(v.Dir, "out.log")
	for _, f := range []string{"console.log", "out.log"} {
		if err := os.WriteFile(filepath.Join(v.Dir, f), nil, 0o644); err != nil {
			return nil, fmt.Errorf("failed to create %q: %w", f, err)
		}
	}
	var stderr bytes.Buffer
	cmd := exec.Command(QEMU, v.args()...)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("failed to start %s: %w", QEMU, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	followDone := make(chan struct{})
	stopFollow := make(chan struct{})
	go func() {
		defer close(followDone)
		follow(outPath, v.Follow, stopFollow)
	}()

	var waitErr error
	select {
	case waitErr = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		waitErr = ctx.Err()
	}
	close(stopFollow)
	<-followDone

	res := &Result{Exit: -1, Duration: time.Since(start)}
	con, _ := os.ReadFile(filepath.Join(v.Dir, "console.log"))
	out, _ := os.ReadFile(outPath)
	res.Console, res.Output = string(con), string(out)
	res.Up, res.Exit, res.Reason = parseOutput(res.Output)
	if ctx.Err() != nil {
		return res, fmt.Errorf("VM (%s) killed after %v: %w", v.Accel, res.Duration.Round(time.Second), ctx.Err())
	}
	if waitErr != nil {
		return res, fmt.Errorf("%s (%s) failed: %w: %s", QEMU, v.Accel, waitErr, strings.TrimSpace(stderr.String()))
	}
	return res, nil
}

// parseOutput finds the markers init writes.
func parseOutput(out string) (up bool, exit int, reason string) {
	exit = -1
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimRight(l, "\r")
		if strings.HasPrefix(l, MarkUp) {
			up = true
		}
		if rest, ok := strings.CutPrefix(l, MarkExit+" "); ok {
			code, why, _ := strings.Cut(rest, " ")
			if n, err := strconv.Atoi(code); err == nil {
				exit, reason = n, why
			}
		}
	}
	return up, exit, reason
}

// follow hands the lines appended to path to fn until stop is closed, then
// the rest.
func follow(path string, fn func(string), stop <-chan struct{}) {
	if fn == nil {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var partial string
	drain := func() {
		for {
			s, err := r.ReadString('\n')
			partial += s
			if err != nil {
				return
			}
			fn(strings.TrimRight(partial, "\r\n"))
			partial = ""
		}
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			drain()
			if partial != "" {
				fn(partial)
			}
			return
		case <-t.C:
			drain()
		}
	}
}

// ErrNoVM is wrapped by ProbeAccel when no accelerator can boot a VM.
var ErrNoVM = errors.New("this machine cannot run the test VM")

// ProbeAccel finds an accelerator that really boots probe (an image whose
// init writes MarkUp and powers off): KVM when /dev/kvm is there and a boot
// with it succeeds within kvmTimeout, else TCG within tcgTimeout. A /dev/kvm
// that opens is not enough: without virtualization in the CPU, KVM fails
// only when the VM starts. It returns the accelerator and, for the log,
// why KVM was not used.
func ProbeAccel(ctx context.Context, kernel, probe, dir string, kvmTimeout, tcgTimeout time.Duration) (accel, why string, err error) {
	try := func(a string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		v := &VM{Kernel: kernel, Initrd: probe, Accel: a, MemoryMiB: 256, CPUs: 1, Dir: filepath.Join(dir, "probe-"+a)}
		res, err := v.Run(ctx)
		if err == nil && !res.Up {
			err = fmt.Errorf("the probe VM did not come up; console:\n%s", tailLines(res.Console, 20))
		}
		return err
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
		why = fmt.Sprintf("no KVM: %v", err)
	} else {
		f.Close()
		if err := try(AccelKVM, kvmTimeout); err != nil {
			why = fmt.Sprintf("KVM does not boot a VM here: %v", firstLine(err.Error()))
		} else {
			return AccelKVM, "", nil
		}
	}
	if err := try(AccelTCG, tcgTimeout); err != nil {
		return "", why, fmt.Errorf("%w: plain emulation (TCG) does not boot either: %v (%s)", ErrNoVM, err, why)
	}
	return AccelTCG, why, nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
