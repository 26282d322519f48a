package nftutil

import (
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	"golang.org/x/sys/unix"
)

// The generation moves with every committed change of any table in the
// namespace, and only then; another namespace's changes do not move it.
func TestGeneration(t *testing.T) {
	testnet.RequireRoot(t)
	ns, other := netnstest.New(t), netnstest.New(t)
	fd, err := unix.Open(ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	gen := func() uint32 {
		t.Helper()
		g, err := Generation(fd)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	g0 := gen()
	if g := gen(); g != g0 {
		t.Fatalf("generation moved from %d to %d with no change", g0, g)
	}
	netnstest.Run(t, other, "nft", "add", "table", "ip", "elsewhere")
	if g := gen(); g != g0 {
		t.Fatalf("another namespace's change moved the generation from %d to %d", g0, g)
	}
	for i, change := range [][]string{
		{"nft", "add", "table", "ip", "t"},
		{"nft", "add", "chain", "ip", "t", "c"},
		{"nft", "add", "rule", "ip", "t", "c", "counter"},
		{"nft", "flush", "chain", "ip", "t", "c"},
		{"nft", "delete", "table", "ip", "t"},
	} {
		before := gen()
		netnstest.Run(t, ns, change...)
		if g := gen(); g == before {
			t.Fatalf("change %d %v left the generation at %d", i, change, g)
		}
	}
}
