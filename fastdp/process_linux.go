package fastdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// processStartTimeout bounds the wait for a started data-plane
	// process's UAPI socket.
	processStartTimeout = 10 * time.Second
	// processCheckInterval is how often the daemon checks that the
	// data-plane process still answers; the exit of a process it started
	// itself is noticed at once.
	processCheckInterval = time.Second
	// processStopTimeout bounds the wait for a data-plane process to exit
	// after SIGTERM, before StopProcess kills it.
	processStopTimeout = 10 * time.Second
	// probeTimeout bounds one connection to the UAPI socket.
	probeTimeout = time.Second
)

// processImpl is the userspace data plane run by a separate, long-lived
// process (mesh-dataplane) that owns the TUN device, wireguard-go and the
// UAPI socket, and that this process configures through the UAPI socket
// exactly as it configures the kernel module. A daemon restart therefore
// leaves the forwarding running, as with the kernel.
type processImpl struct {
	name string
	// bin is the program to start; "" in ProcessExternal mode, where a
	// supervisor (systemd, a DaemonSet) runs it and this process waits.
	bin       string
	args      []string // passed to bin after the device's
	netnsPath string
	nl        *netlink.Handle
	log       *slog.Logger

	// exited receives when the data-plane process has exited: one this
	// process started (its reaper), or one it found (a pidfd).
	exited chan struct{}
	// stop ends the pidfd watches (closed by the data plane's Close).
	stop chan struct{}

	mu   sync.Mutex
	st   ProcessStatus
	lost bool // it was up, then found gone
	// stale: the process went away or was replaced since the data plane
	// last configured it.
	stale bool
	// watched is the PID whose exit notifyExit watches.
	watched int
}

func newProcessImpl(opts Options, nl *netlink.Handle, log *slog.Logger, stop chan struct{}) *processImpl {
	p := &processImpl{name: opts.DeviceName, args: opts.ProcessArgs, netnsPath: opts.NetNSPath, nl: nl,
		log: log, exited: make(chan struct{}, 1), stop: stop}
	p.st.Mode = opts.Process
	if opts.Process == ProcessAuto {
		p.bin = opts.ProcessBinary
	}
	return p
}

func (p *processImpl) kind() string { return ModeUserspace }

// ensure makes the data-plane process serve the device: the one that
// answers on the UAPI socket, else (ProcessAuto) one started now.
func (p *processImpl) ensure(mtu int) (netlink.Link, func() error, error) {
	pid, err := probeProcess(p.name)
	if err != nil && p.bin == "" {
		// A supervisor starting it (the daemon and the data-plane pod
		// start together): a short wait spares a reconcile period.
		pid, err = p.waitExternal()
	}
	if err != nil {
		if pid, ok := p.runsUnanswering(); ok {
			return nil, nil, fmt.Errorf("the data-plane process of %q (pid %d) runs but did not answer on %s: %w", p.name, pid, uapiSocket(p.name), err)
		}
		p.markDown()
		if p.bin == "" {
			return nil, nil, fmt.Errorf("the data-plane process of %q is not running (%v); its supervisor (such as the mesh-dataplane DaemonSet) starts it", p.name, err)
		}
		if pid, err = p.start(mtu); err != nil {
			return nil, nil, err
		}
	}
	p.markUp(pid)
	l, err := linkByName(p.nl, p.name)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to look up link %q served by the data-plane process: %w", p.name, err)
	}
	if l.Type() != "tuntap" {
		return nil, nil, fmt.Errorf("link %q exists and is a %s, not a TUN device", p.name, l.Type())
	}
	return l, nil, nil
}

// externalWait bounds how long ensure waits for a data-plane process
// that a supervisor starts; the next reconcile, or the watch, retries.
const externalWait = 2 * time.Second

// waitExternal waits up to externalWait for the UAPI socket to answer.
func (p *processImpl) waitExternal() (int, error) {
	deadline := time.Now().Add(externalWait)
	for {
		pid, err := probeProcess(p.name)
		if err == nil || time.Now().After(deadline) {
			return pid, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether the process still answers, and records it.
func (p *processImpl) alive() bool {
	pid, err := probeProcess(p.name)
	if err != nil {
		if pid, ok := p.runsUnanswering(); ok {
			p.log.Debug("the data-plane process did not answer in time but runs; not restarted", "pid", pid, "error", err)
			return true
		}
		p.markDown()
		return false
	}
	p.markUp(pid)
	return true
}

// runsUnanswering says whether the process last seen serving the device
// still runs, after its socket did not answer: a data plane too busy to
// accept within probeTimeout is not a gone one. On a host saturated by 100
// simulated ones, taking it for gone started a second process, which
// failed at once (the TUN device is the running one's), and counted a
// restart, which reconfigured the whole device: hundreds of times a run
// (docs/scale.md). Its exit is still seen at once (notifyExit, the reaper
// of start), and a zombie does not count as running.
func (p *processImpl) runsUnanswering() (int, bool) {
	p.mu.Lock()
	pid, up := p.st.PID, p.st.Up
	p.mu.Unlock()
	return pid, up && pid > 0 && processExists(pid)
}

func (p *processImpl) markDown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.st.Up {
		p.lost = true
	}
	p.stale = true
	p.st.Up, p.st.PID = false, 0
}

// configured records that the data plane has configured the process now
// serving the device.
func (p *processImpl) configured() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stale = false
}

// needsConfig reports whether the process went away or was replaced since
// the data plane last configured it.
func (p *processImpl) needsConfig() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stale
}

func (p *processImpl) markUp(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lost || (p.st.PID != 0 && pid != 0 && pid != p.st.PID) {
		p.st.Restarts++
		p.stale = true
	}
	p.lost = false
	p.st.Up, p.st.PID = true, pid
	if pid != 0 && pid != p.watched && p.stop != nil {
		p.watched = pid
		p.notifyExit(pid)
	}
}

// notifyExit signals exited as soon as process pid exits, also when this
// process did not start it (a daemon restarted after starting it): a pidfd
// becomes readable when the process exits. Without pidfds (kernels before
// 5.3) the periodic check alone notices.
func (p *processImpl) notifyExit(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		p.log.Debug("cannot watch the data-plane process's exit; the periodic check notices it", "pid", pid, "err", err)
		return
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, 500)
			if n > 0 {
				select {
				case p.exited <- struct{}{}:
				default:
				}
				return
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
			select {
			case <-p.stop:
				return
			default:
			}
		}
	}()
}

func (p *processImpl) status() ProcessStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// start starts the data-plane program detached from this process: in its
// own session (so neither a signal to this process's group nor the end of
// this process reaches it) with stdout and stderr on this process's stderr
// (the journal under systemd), and an empty environment (this process's
// holds the mesh password). It waits until the program serves the UAPI
// socket.
func (p *processImpl) start(mtu int) (int, error) {
	args := []string{"--device", p.name, "--mtu", strconv.Itoa(mtu)}
	if p.netnsPath != "" {
		args = append(args, "--netns", p.netnsPath)
	}
	args = append(args, p.args...)
	cmd := exec.Command(p.bin, args...)
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("failed to start the data-plane process %s: %w", p.bin, err)
	}
	pid := cmd.Process.Pid
	p.log.Info("started the data-plane process", "pid", pid, "binary", p.bin)
	done := make(chan struct{})
	var waitErr error
	// Reap it, and tell the watcher at once when it exits while this
	// process runs (after this process exits, init reaps it).
	go func() {
		waitErr = cmd.Wait()
		close(done)
		p.log.Warn("the data-plane process exited", "pid", pid, "status", waitErr)
		select {
		case p.exited <- struct{}{}:
		default:
		}
	}()
	deadline := time.Now().Add(processStartTimeout)
	for {
		if got, err := probeProcess(p.name); err == nil {
			return got, nil
		}
		select {
		case <-done:
			return 0, fmt.Errorf("the data-plane process %s exited before serving %s: %v", p.bin, uapiSocket(p.name), waitErr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return 0, fmt.Errorf("the data-plane process %s did not serve %s within %v", p.bin, uapiSocket(p.name), processStartTimeout)
		}
	}
}

// close leaves the data-plane process running: that is the point of it.
func (p *processImpl) close() error { return nil }

// probeProcess connects to the UAPI socket of device name and returns the
// PID of the process that serves it (SO_PEERCRED; 0 when that process is
// in a PID namespace this one cannot see).
func probeProcess(name string) (int, error) {
	c, err := net.DialTimeout("unix", uapiSocket(name), probeTimeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, nil
	}
	pid := 0
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid, nil
}

// StopProcess stops the data-plane process serving the UAPI socket of
// opts.DeviceName, if one does: SIGTERM, then SIGKILL after 10 s. The TUN
// device stays (Reset or the caller removes it). It reports whether a
// process was stopped, and refuses (an error) when the socket is served by
// another program, such as a daemon running wireguard-go in its own
// process.
func StopProcess(ctx context.Context, opts Options) (bool, error) {
	if err := opts.normalize(); err != nil {
		return false, err
	}
	sock := uapiSocket(opts.DeviceName)
	pid, err := probeProcess(opts.DeviceName)
	if err != nil {
		return false, nil
	}
	if pid == 0 {
		return false, fmt.Errorf("cannot tell which process serves %s", sock)
	}
	comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	if err != nil {
		return false, fmt.Errorf("cannot tell which process serves %s: %w", sock, err)
	}
	if name := strings.TrimSpace(string(comm)); name != ProcessBinaryName {
		return false, fmt.Errorf("%s is served by %s (pid %d), not by %s; stop the daemon first", sock, name, pid, ProcessBinaryName)
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return false, fmt.Errorf("failed to stop the data-plane process %d: %w", pid, err)
	}
	deadline := time.Now().Add(processStopTimeout)
	for processExists(pid) {
		if time.Now().After(deadline) {
			_ = unix.Kill(pid, unix.SIGKILL)
			deadline = time.Now().Add(processStopTimeout)
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("waiting for the data-plane process %d to stop: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	opts.Logger.Info("stopped the data-plane process", "component", "fastdp", "device", opts.DeviceName, "pid", pid)
	return true, nil
}

// processExists reports whether pid is a live process (a zombie, which no
// longer holds the TUN device or the socket, counts as gone).
func processExists(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses, which may hold
	// spaces and parentheses itself.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}
