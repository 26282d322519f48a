package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Proc is a long-running process inside a host, started by Host.Start. Its
// methods are safe for concurrent use.
type Proc struct {
	host    *Host
	name    string
	cmd     *exec.Cmd
	logPath string
	logFile *os.File

	done    chan struct{} // closed when the process has been waited for
	waitErr error         // result of cmd.Wait, valid once done is closed
}

// Start starts name with args inside the host and returns without waiting.
// env is appended to the test process's environment (later entries win).
// stdout and stderr go to a log file under the host's logs/ directory (see
// Log). The process dies with the test process (Pdeathsig), even if that is
// SIGKILLed. The process is SIGKILLed with its process group when t ends, and in
// any case when the Net is cleaned up; the tails of all logs are printed if
// the test failed. Start fails t if the process cannot be started; call it
// from the goroutine of t.
func (h *Host) Start(t testing.TB, name string, args []string, env []string) *Proc {
	t.Helper()
	p, err := h.start(name, args, env)
	if err != nil {
		t.Fatalf("failed to start %q in %s: %v", name, h.Name, err)
	}
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p
}

func (h *Host) start(name string, args []string, env []string) (*Proc, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.net.mu.Lock()
	closed := h.net.closed
	h.net.mu.Unlock()
	if closed {
		return nil, errors.New("testnet already cleaned up")
	}
	h.logSeq++
	logPath := filepath.Join(h.dir, "logs", fmt.Sprintf("%02d-%s.log", h.logSeq, filepath.Base(name)))
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("failed to create log file %q: %w", logPath, err)
	}
	cmd := h.Exec(context.Background(), name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := startTied(cmd); err != nil {
		f.Close()
		return nil, err
	}
	p := &Proc{host: h, name: name, cmd: cmd, logPath: logPath, logFile: f, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	h.procs = append(h.procs, p)
	return p, nil
}

// PID is the process's PID in the root PID namespace.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// String names the process and its host.
func (p *Proc) String() string {
	return fmt.Sprintf("%s[%d] in %s", filepath.Base(p.name), p.PID(), p.host.Name)
}

// Exited reports whether the process has exited (and been reaped).
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait blocks until the process exits or timeout passes. It returns the
// exit error (nil for exit status 0, *exec.ExitError otherwise) or a timeout
// error, leaving the process running.
func (p *Proc) Wait(timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.waitErr
	case <-timer.C:
		return fmt.Errorf("%s still running after %v", p, timeout)
	}
}

// Kill SIGKILLs the process and its process group and waits (bounded) until
// it is reaped. Killing an exited process is not an error.
func (p *Proc) Kill() error {
	if !p.Exited() {
		_ = killGroup(p.PID())
	}
	return p.waitDone(killTimeout)
}

// Stop sends SIGTERM and waits up to timeout for the process to exit, then
// SIGKILLs it with its process group. It returns nil if the process exited
// on its own (whatever its status; see Wait), and an error if it had to be
// killed or would not die.
func (p *Proc) Stop(timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.Exited() {
		return fmt.Errorf("failed to send SIGTERM to %s: %w", p, err)
	}
	if err := p.Wait(timeout); err == nil || p.Exited() {
		return nil
	}
	if err := p.Kill(); err != nil {
		return err
	}
	return fmt.Errorf("%s did not exit within %v of SIGTERM, killed it", p, timeout)
}

// Log returns everything the process wrote to stdout and stderr so far.
func (p *Proc) Log() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("<failed to read log %q: %v>", p.logPath, err)
	}
	return string(data)
}

// LogPath is the file stdout and stderr go to; it is removed by cleanup.
func (p *Proc) LogPath() string { return p.logPath }

// signalGroup SIGKILLs the process and its group without waiting.
func (p *Proc) signalGroup() {
	if !p.Exited() {
		_ = killGroup(p.PID())
	}
}

// waitDone waits until the process is reaped.
func (p *Proc) waitDone(timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		return fmt.Errorf("%s still not reaped %v after SIGKILL", p, timeout)
	}
}

func (p *Proc) closeLog() { p.logFile.Close() }

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
