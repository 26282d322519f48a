package policy

import (
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// nftIn returns an applier for the netns at path, its fd closed when t
// ends.
func nftIn(t testing.TB, path string) *NFT {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("failed to open netns %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return NewNFT(nftables.WithNetNSFd(fd))
}
