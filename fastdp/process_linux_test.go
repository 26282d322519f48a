package fastdp

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProcessRestartCounting: status counts a restart of the data-plane
// process when it was up and is found up again after being gone, or under
// another PID, and never for the first sighting or an unchanged process.
func TestProcessRestartCounting(t *testing.T) {
	type step struct {
		up  bool
		pid int
	}
	tests := []struct {
		name  string
		steps []step
		want  ProcessStatus
	}{
		{name: "first sighting", steps: []step{{true, 10}}, want: ProcessStatus{PID: 10, Up: true}},
		{name: "unchanged", steps: []step{{true, 10}, {true, 10}, {true, 10}}, want: ProcessStatus{PID: 10, Up: true}},
		{name: "down before ever up", steps: []step{{false, 0}, {true, 10}}, want: ProcessStatus{PID: 10, Up: true}},
		{name: "gone", steps: []step{{true, 10}, {false, 0}}, want: ProcessStatus{}},
		{name: "gone and back", steps: []step{{true, 10}, {false, 0}, {false, 0}, {true, 11}}, want: ProcessStatus{PID: 11, Up: true, Restarts: 1}},
		{name: "replaced between checks", steps: []step{{true, 10}, {true, 12}}, want: ProcessStatus{PID: 12, Up: true, Restarts: 1}},
		{name: "twice", steps: []step{{true, 10}, {false, 0}, {true, 11}, {false, 0}, {true, 13}}, want: ProcessStatus{PID: 13, Up: true, Restarts: 2}},
		{name: "PID unknown (other PID namespace)", steps: []step{{true, 0}, {true, 0}}, want: ProcessStatus{Up: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &processImpl{}
			for _, s := range tt.steps {
				if s.up {
					p.markUp(s.pid)
				} else {
					p.markDown()
				}
			}
			if got := p.status(); got != tt.want {
				t.Errorf("status = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestUseProcess: ProcessAuto uses the data-plane program only when it is
// an executable file (else wireguard-go runs in the daemon, with a
// warning); ProcessExternal always (a supervisor runs it); ProcessOff
// never.
func TestUseProcess(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, ProcessBinaryName)
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, mode, bin string
		want, warns     bool
	}{
		{name: "auto with the program", mode: ProcessAuto, bin: exe, want: true},
		{name: "auto without it", mode: ProcessAuto, bin: filepath.Join(dir, "missing"), warns: true},
		{name: "auto, not executable", mode: ProcessAuto, bin: plain, warns: true},
		{name: "auto, a directory", mode: ProcessAuto, bin: dir, warns: true},
		{name: "auto, no path", mode: ProcessAuto, bin: "", warns: true},
		{name: "external", mode: ProcessExternal, want: true},
		{name: "off", mode: ProcessOff, bin: exe},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs strings.Builder
			log := slog.New(slog.NewTextHandler(&logs, nil))
			if got := useProcess(Options{Process: tt.mode, ProcessBinary: tt.bin}, log); got != tt.want {
				t.Errorf("useProcess(%s, %q) = %v, want %v", tt.mode, tt.bin, got, tt.want)
			}
			if warned := strings.Contains(logs.String(), "level=WARN"); warned != tt.warns {
				t.Errorf("warned = %v, want %v; logs: %s", warned, tt.warns, logs.String())
			}
		})
	}
}

// TestOptionsProcessMode: an empty mode is ProcessOff; an unknown one is
// refused with its name.
func TestOptionsProcessMode(t *testing.T) {
	o := Options{}
	if err := o.normalize(); err != nil || o.Process != ProcessOff {
		t.Errorf("normalize of an empty mode: %q, %v; want %q", o.Process, err, ProcessOff)
	}
	o = Options{Process: "sometimes"}
	if err := o.normalize(); err == nil || !strings.Contains(err.Error(), "sometimes") {
		t.Errorf("normalize of an unknown mode: %v, want an error naming it", err)
	}
}

// TestProcessExists: a running process exists; a zombie (exited, not yet
// reaped: it holds neither the TUN device nor the socket) and a reaped one
// do not.
func TestProcessExists(t *testing.T) {
	if !processExists(os.Getpid()) {
		t.Errorf("processExists(self) = false")
	}
	cmd := exec.Command("sh", "-c", "exit 0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for processExists(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if processExists(pid) {
		t.Errorf("processExists(zombie %d) = true", pid)
	}
	_ = cmd.Wait()
	if processExists(pid) {
		t.Errorf("processExists(reaped %d) = true", pid)
	}
}

// TestProcessNeedsConfig: a data-plane process that went away, or was
// replaced, needs the last config again (its wireguard-go has no peers);
// one that stayed does not, and a configuration clears the need.
func TestProcessNeedsConfig(t *testing.T) {
	p := &processImpl{}
	p.markUp(10)
	if p.needsConfig() {
		t.Fatal("the first process seen needs a config before anything happened")
	}
	p.markUp(10)
	if p.needsConfig() {
		t.Fatal("an unchanged process needs a config")
	}
	p.markDown()
	if !p.needsConfig() {
		t.Fatal("a process that went away needs no config")
	}
	p.markUp(11)
	p.configured()
	if p.needsConfig() {
		t.Fatal("still needs a config after configured")
	}
	p.markUp(12) // replaced between two checks
	if !p.needsConfig() {
		t.Fatal("a replaced process needs no config")
	}
}

// TestProcessBusyIsNotGone: a data-plane process whose socket does not
// answer but that still runs is busy, not gone: alive keeps it up with no
// restart counted, and ensure fails rather than start a second one (which
// could not take the TUN device). Once it has exited, it is gone.
func TestProcessBusyIsNotGone(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	// No socket answers for this device; this test's own process stands
	// in for a running, busy data plane.
	p := &processImpl{name: "mesh-test-busy", bin: filepath.Join(t.TempDir(), "never-started"), log: log}
	p.markUp(os.Getpid())
	if !p.alive() {
		t.Fatal("alive() = false for a running process whose socket did not answer")
	}
	if st := p.status(); !st.Up || st.PID != os.Getpid() || st.Restarts != 0 || p.needsConfig() {
		t.Fatalf("after a late answer: status %+v, needs config %v; want up, same PID, no restart", st, p.needsConfig())
	}
	_, _, err := p.ensure(1420)
	if err == nil || !strings.Contains(err.Error(), "runs but did not answer") {
		t.Fatalf("ensure() = %v, want an error saying the process runs but did not answer (and no start)", err)
	}

	cmd := exec.Command("sh", "-c", "exit 0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	gone := &processImpl{name: "mesh-test-busy", log: log}
	gone.markUp(cmd.Process.Pid)
	if gone.alive() {
		t.Fatal("alive() = true for a process that has exited")
	}
	if st := gone.status(); st.Up {
		t.Fatalf("status %+v after the process exited, want down", st)
	}
}
