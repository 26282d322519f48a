package testnet

import (
	"os"
	"os/exec"
	"testing"
)

// RequireRoot skips t when the test is not running as root, unless CI=true,
// where a missing capability is a failure: tests never skip in CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root, and CI=true forbids skipping it")
	}
	t.Skip("needs root (set CI=true to make this a failure)")
}

// RequireCommand skips t when the named program is not installed, unless
// CI=true, where scripts/deps.sh must have installed it and its absence is
// a failure.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test needs %s, and CI=true forbids skipping it: %v", name, err)
	}
	t.Skipf("needs %s: %v", name, err)
	return ""
}
