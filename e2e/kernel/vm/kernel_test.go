//go:build kernelvm

package kernelvm

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// TestKernelLink: `--dataplane kernel` makes a kernel WireGuard link, set
// up as the configuration says, and the status says kernel.
func TestKernelLink(t *testing.T) {
	net := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "kl"})
	h := net.Hosts()[0]
	n := launch(t, h, nil, "--dataplane", "kernel")
	meshtest.DumpLogsOnFailure(t, n)
	testnet.Eventually(t, 60*time.Second, 500*time.Millisecond, func() error { return meshtest.Ready([]*meshtest.Node{n}) })
	st := n.MustStatus()
	if st.Dataplane != fastdp.ModeKernel {
		t.Fatalf("status dataplane = %q, want kernel", st.Dataplane)
	}
	if k := linkKind(t, h, fastdp.DefaultDeviceName); k != "wireguard" {
		t.Fatalf("link %s is %q, want a wireguard link", fastdp.DefaultDeviceName, k)
	}
	dev, err := kernelDevice(h, fastdp.DefaultDeviceName)
	if err != nil {
		t.Fatal(err)
	}
	if dev.ListenPort != fastdp.DefaultListenPort {
		t.Fatalf("listen port %d, want %d", dev.ListenPort, fastdp.DefaultListenPort)
	}
	if dev.PublicKey == [32]byte{} {
		t.Fatal("the kernel device has no key")
	}
}
