package testnet

import (
	"os"
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
