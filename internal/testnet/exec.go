package testnet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultRunTimeout bounds Host.Run when its context has no deadline.
const DefaultRunTimeout = 2 * time.Minute

// waitDelay bounds how long exec.Cmd.Wait waits for output pipes still held by
// descendants (e.g. a daemon a command started) after the command exits.
const waitDelay = 5 * time.Second

// Exec returns a command that runs name inside the host's network, mount and
// UTS namespaces, like exec.CommandContext (it does not start it). The process
// is nsenter, which execs name, so cmd.Process.Pid is the PID of name. The
// command gets its own process group, is put in the host's cgroup and is
// SIGKILLed with its process group when ctx is done. Unlike Start, it is not
// tied to the life of the test process (Pdeathsig cannot be set safely on a
// command started from an arbitrary goroutine): if the test process is
// killed, it lives until Net cleanup or CleanupStale, so prefer Start for
// long-running processes. cmd.Dir is ignored: it starts in the host's "/".
// Output pipes are waited for at most 5s after the command exits.
func (h *Host) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	all := append(h.nsenterArgs(), "--", name)
	cmd := exec.CommandContext(ctx, "nsenter", append(all, args...)...)
	cmd.SysProcAttr = h.sysProcAttr()
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = waitDelay
	return cmd
}

func (h *Host) sysProcAttr() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if h.cgFile != nil {
		attr.UseCgroupFD = true
		attr.CgroupFD = int(h.cgFile.Fd())
	}
	return attr
}

// Run runs name in the host and returns its combined output. It blocks until
// the command exits or ctx is done; without a deadline on ctx it is bounded by
// DefaultRunTimeout. The error names the command and host and includes the
// output.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultRunTimeout)
		defer cancel()
	}
	out, err := h.Exec(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("failed to run %q in %s: %w; output: %s",
			strings.Join(append([]string{name}, args...), " "), h.Name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// makeNamespaces creates persistent namespaces as files in dir: a network
// namespace "net" and, with host set, a UTS namespace "uts" and a mount
// namespace "mnt" (with private propagation, so nothing mounted in it leaks
// out). dir must be on a private mount.
func makeNamespaces(ctx context.Context, dir string, host bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("failed to create namespace directory %q: %w", dir, err)
	}
	kinds := []string{"net"}
	if host {
		kinds = append(kinds, "uts", "mnt")
	}
	var args []string
	for _, k := range kinds {
		f := filepath.Join(dir, k)
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return fmt.Errorf("failed to create namespace file %q: %w", f, err)
		}
		flag := map[string]string{"net": "--net=", "uts": "--uts=", "mnt": "--mount="}[k]
		args = append(args, flag+f)
	}
	if host {
		args = append(args, "--propagation", "private")
	}
	args = append(args, "true")
	if err := runCmd(ctx, "", "unshare", args...); err != nil {
		return fmt.Errorf("failed to create namespaces in %q: %w", dir, err)
	}
	return nil
}

// runCmd runs a setup command in the root namespaces with stdin as input and
// returns an error including its output.
func runCmd(ctx context.Context, stdin, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = waitDelay
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := startTied(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// killGroup SIGKILLs the process group led by pid, or pid alone if it has no
// group any more.
func killGroup(pid int) error {
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		return syscall.Kill(pid, syscall.SIGKILL)
	}
	return nil
}
