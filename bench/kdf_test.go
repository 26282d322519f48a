//go:build bench

package bench

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/meshnet/mesh/crypto"
)

// kdfRuns is how many password keys benchKDF derives.
var kdfRuns = envInt("BENCH_KDF_RUNS", 5)

// kdfCost is what one guess at a password costs an attacker.
type kdfCost struct {
	argon    []time.Duration // crypto.PasswordKey, the whole derivation
	argonMem uint64          // bytes allocated per derivation
	legacy   time.Duration   // the previous release's derivation, mean
}

// benchKDF measures one password guess: the Argon2id master key (what the
// daemon runs once per password) and, for comparison, the previous
// release's single HKDF pass.
func benchKDF(t *testing.T, r *report) {
	pw := []byte("a password of the benchmark, long enough")
	var c kdfCost
	var before, after runtime.MemStats
	for i := range kdfRuns {
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		if _, err := crypto.PasswordKey(pw, fmt.Sprintf("bench-%d", i)); err != nil {
			t.Fatal(err)
		}
		c.argon = append(c.argon, time.Since(start))
		runtime.ReadMemStats(&after)
		c.argonMem = max(c.argonMem, after.TotalAlloc-before.TotalAlloc)
	}
	const legacyRuns = 10000
	start := time.Now()
	for range legacyRuns {
		if _, err := crypto.LegacyPasswordKey(pw); err != nil {
			t.Fatal(err)
		}
	}
	c.legacy = time.Since(start) / legacyRuns
	r.kdf = &c
}

func (c *kdfCost) print(p func(string, ...any)) {
	p("\n5. Mesh key from a password, per guess (what an offline attacker pays; the daemon pays it once per password)\n")
	if c == nil {
		p("   not measured (see the test log)\n")
		return
	}
	p("   %-44s %10s %10s %12s\n", "", "p50", "max", "memory")
	p("   %-44s %10s %10s %12s\n", fmt.Sprintf("Argon2id t=%d m=%d MiB p=%d (%d runs)", crypto.Argon2Time, crypto.Argon2Memory>>10, crypto.Argon2Threads, len(c.argon)),
		ms(pct(c.argon, .5)), ms(pct(c.argon, 1)), mib(int64(c.argonMem)))
	p("   %-44s %10s\n", "previous release: one HKDF-SHA256 pass", fmt.Sprintf("%.1f us", float64(c.legacy)/1e3))
	p("   goal >= 100 ms and >= 64 MiB per guess: %s\n", verdict(pct(c.argon, .5) >= 100*time.Millisecond && c.argonMem >= 64<<20))
}
