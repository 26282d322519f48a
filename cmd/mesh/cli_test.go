package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCLIConventions(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"attach daemon down", []string{"attach", "--socket", "/nonexistent/mesh.sock", "somens"}, exitUnreachable, []string{"cannot reach the mesh daemon", "is `mesh launch` running?"}},
		{"detach daemon down", []string{"detach", "--socket", "/nonexistent/mesh.sock", "1234"}, exitUnreachable, []string{"cannot reach the mesh daemon"}},
		{"attach list daemon down", []string{"attach", "--list", "--socket", "/nonexistent/mesh.sock"}, exitUnreachable, []string{"cannot reach the mesh daemon"}},
		{"attach without target", []string{"attach"}, exitUsage, []string{"want exactly one TARGET"}},
		{"attach two targets", []string{"attach", "a", "b"}, exitUsage, []string{"want exactly one TARGET"}},
		{"attach list with target", []string{"attach", "--list", "a"}, exitUsage, []string{"--list takes no TARGET"}},
		{"attach bad output", []string{"attach", "-o", "yaml", "a"}, exitUsage, []string{"unknown output format"}},
		{"attach bad PID", []string{"attach", "-5"}, exitUsage, []string{"flag provided but not defined"}},
		{"attach help shows long flags", []string{"attach", "-h"}, exitUsage, []string{"--ifname", "--list", "--socket", "-o STRING"}},
		{"launch help shows long flags", []string{"launch", "--help"}, exitUsage, []string{"--password-file", "--cni-bin-dir"}},
		{"version json", []string{"version", "-o", "json"}, 0, []string{`"version": "dev"`, `"goVersion"`}},
		{"version plain", []string{"version"}, 0, []string{"dev\n"}},
		{"completion without shell", []string{"completion"}, exitUsage, []string{"bash|zsh|fish"}},
		{"completion unknown shell", []string{"completion", "tcsh"}, exitUsage, []string{"unknown shell"}},
		{"completion bash", []string{"completion", "bash"}, 0, []string{"complete -F _mesh mesh", "attach) words=\"--ifname --list -o --socket\"", "launch) words=\"--accept-legacy-key --advertise-addr", "rotate) words=\"--node-key --socket\""}},
		{"completion zsh", []string{"completion", "zsh"}, 0, []string{"#compdef mesh", "bashcompinit"}},
		{"completion fish", []string{"completion", "fish"}, 0, []string{"complete -c mesh -n \"__fish_seen_subcommand_from attach\" -l ifname", "-s o"}},
		{"usage lists exit codes", []string{"help"}, 0, []string{"3 the daemon cannot be", "mesh attach"}},
		{"leave daemon down", []string{"leave", "--socket", "/nonexistent/mesh.sock"}, exitUnreachable, []string{"cannot reach the mesh daemon"}},
		{"leave takes no argument", []string{"leave", "now"}, exitUsage, []string{"Usage: mesh leave"}},
		{"usage lists leave", []string{"help"}, 0, []string{"mesh leave", "(a stop by SIGTERM is a restart, not a leave)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb)
			all := out.String() + errb.String()
			if code != tt.code {
				t.Fatalf("run(%v) = %d, want %d; output:\n%s", tt.args, code, tt.code, all)
			}
			for _, w := range tt.want {
				if !strings.Contains(all, w) {
					t.Errorf("run(%v) output lacks %q:\n%s", tt.args, w, all)
				}
			}
		})
	}
}

func TestVersionJSONParses(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"version", "-o", "json"}, &out, &out); code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	var v versionInfo
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v.Version != version || v.Platform == "" {
		t.Fatalf("version JSON %q: %+v, %v", out.String(), v, err)
	}
}

// TestBashCompletionWorks sources the bash script and completes with it.
func TestBashCompletionWorks(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is required")
	}
	var out bytes.Buffer
	if code := run([]string{"completion", "bash"}, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	f := filepath.Join(t.TempDir(), "completion")
	if err := os.WriteFile(f, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, words, cword, want string
	}{
		{"command", "mesh att", "1", "attach"},
		{"flag", "mesh attach --if", "2", "--ifname"},
		{"subject", "mesh status con", "2", "connections"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := `. "$1"; COMP_WORDS=($2); COMP_CWORD=$3; _mesh; echo "${COMPREPLY[*]}"`
			b, err := exec.Command(bash, "-c", script, "bash", f, tt.words, tt.cword).CombinedOutput()
			if err != nil || strings.TrimSpace(string(b)) != tt.want {
				t.Fatalf("completing %q: %q, %v; want %q", tt.words, b, err, tt.want)
			}
		})
	}
}

// TestCompletionKnowsEveryCommand keeps the completion's command list and
// the usage text in step.
func TestCompletionKnowsEveryCommand(t *testing.T) {
	for name := range commands {
		var out bytes.Buffer
		run([]string{name, "-h"}, &out, &out)
		if strings.Contains(out.String(), "unknown command") {
			t.Errorf("completion offers %q, which mesh does not know", name)
		}
	}
	for _, line := range strings.Split(usage, "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] == "mesh" && f[1] != "COMMAND" {
			if _, ok := commands[f[1]]; !ok {
				t.Errorf("usage lists %q, which completion does not offer", f[1])
			}
		}
	}
}
