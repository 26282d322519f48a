package testnet

import (
	"fmt"
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
	if err := Poll(timeout, interval, cond); err != nil {
		t.Fatal(err)
	}
}

// Poll is Eventually returning the error instead of failing a test, for
// callers that measure or report rather than fail (benchmarks).
func Poll(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for tries := 1; ; tries++ {
		err := cond()
		if err == nil {
			return nil
		}
		if !time.Now().Add(interval).Before(deadline) {
			return fmt.Errorf("condition not met within %v (%d tries): %w", timeout, tries, err)
		}
		time.Sleep(interval)
	}
}
