package mesh

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMemberlistLogTextsPinned fails when the memberlist module this build
// uses no longer logs the texts the daemon derives events from: suspicion
// (which drives routing) and gossip that no key decrypts.
func TestMemberlistLogTextsPinned(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hashicorp/memberlist").Output()
	if err != nil {
		t.Fatalf("locating the memberlist module: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no memberlist sources in %q: %v", dir, err)
	}
	var src bytes.Buffer
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
	}
	for _, want := range []string{`"[INFO] memberlist: ` + suspectLine + `"`, decryptFailure} {
		if !bytes.Contains(src.Bytes(), []byte(want)) {
			t.Errorf("memberlist in %s no longer contains %s: update memberlistlog.go", dir, want)
		}
	}
}

func TestLogWriterEvents(t *testing.T) {
	tests := []struct {
		name        string
		line        string
		wantSuspect string
		wantLog     string
	}{
		{name: "suspect", line: "[INFO] memberlist: " + fmt.Sprintf(suspectLine, "host-2"), wantSuspect: "host-2"},
		{name: "suspect with dots", line: "2026/01/01 00:00:00 [INFO] memberlist: " + fmt.Sprintf(suspectLine, "node.example"), wantSuspect: "node.example"},
		{name: "other info", line: "[INFO] memberlist: Marking host-2 as failed, suspect timeout reached (0 peer confirmations)", wantLog: "Marking host-2"},
		{name: "near miss", line: "[INFO] memberlist: Suspect host-2 has failed", wantLog: "Suspect host-2"},
		{name: "wrong key", line: "[ERR] memberlist: failed to receive: " + decryptFailure + " the message from=192.0.2.9:6783", wantLog: "wrong mesh password?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			var got string
			w := logWriter{log: slog.New(slog.NewTextHandler(&buf, nil)), suspect: func(n string) { got = n }}
			if _, err := w.Write([]byte(tt.line + "\n")); err != nil {
				t.Fatal(err)
			}
			if got != tt.wantSuspect {
				t.Errorf("suspect = %q, want %q", got, tt.wantSuspect)
			}
			if tt.wantLog != "" && !strings.Contains(buf.String(), tt.wantLog) {
				t.Errorf("log %q does not contain %q", buf.String(), tt.wantLog)
			}
		})
	}
}
