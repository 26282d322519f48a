//go:build bench

package bench

import (
	"syscall"
	"testing"
	"time"
)

// TestGroupCPU checks the CPU accounting of part 3 against this test
// process's own process group: burning CPU for a while must show up.
func TestGroupCPU(t *testing.T) {
	pgid := syscall.Getpgrp()
	before, err := groupCPU(pgid)
	if err != nil {
		t.Fatal(err)
	}
	var x uint64
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		for i := range 1000 {
			x += uint64(i) * x
		}
	}
	after, err := groupCPU(pgid)
	if err != nil {
		t.Fatal(err)
	}
	// 300 ms of wall clock spinning; on a loaded machine the process may
	// get less than all of it, but not less than a tenth.
	if d := after - before; d < 30*time.Millisecond {
		t.Errorf("groupCPU grew by %v over 300 ms of spinning (x=%d), want >= 30ms", d, x)
	}
	if _, err := groupCPU(1 << 30); err == nil {
		t.Error("groupCPU of a process group that does not exist: no error")
	}
}
