package testnet

import (
	"testing"
	"time"
)

// Eventually calls cond every interval until it returns nil, and fails t
// with cond's last error if that does not happen within timeout. cond is
// called at least once, and must itself be bounded: Eventually does not
// interrupt it, so the total time is up to timeout plus one call of cond.
// Call it from the goroutine of t.
func Eventually(t testing.TB, timeout, interval time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for tries := 1; ; tries++ {
		err := cond()
		if err == nil {
			return
		}
		if !time.Now().Add(interval).Before(deadline) {
			t.Fatalf("condition not met within %v (%d tries): %v", timeout, tries, err)
		}
		time.Sleep(interval)
	}
}
