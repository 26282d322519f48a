package testnet

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// QuietFailureLogs reports whether a failed test should keep its
// processes' logs in files rather than print them: under CI=true, where
// only the end of a run's output may be read, a test's failure message
// must not be buried under thousands of log lines printed after it.
func QuietFailureLogs() bool { return os.Getenv("CI") == "true" }

// fileSafe turns a test's or process's name into one path element.
var fileSafe = strings.NewReplacer("/", "_", " ", "_")

// KeepLog copies p's log out of the test's directories (which cleanup
// removes) into a directory under os.TempDir named after the test, and
// returns a line saying where it is.
func KeepLog(t testing.TB, p *Proc) string {
	log := p.Log()
	dir := filepath.Join(os.TempDir(), "mesh-test-logs", fileSafe.Replace(t.Name()))
	path := filepath.Join(dir, fmt.Sprintf("%s-%d.log", fileSafe.Replace(p.String()), p.PID()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Sprintf("not kept: %v", err)
	}
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		return fmt.Sprintf("not kept: %v", err)
	}
	return fmt.Sprintf("%d lines kept in %s", strings.Count(log, "\n"), path)
}
