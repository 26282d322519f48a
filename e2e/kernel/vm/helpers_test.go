//go:build kernelvm

package kernelvm

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

func TestMain(m *testing.M) {
	if os.Getenv(meshtest.BinDirEnv) == "" {
		fmt.Fprintf(os.Stderr, "these tests run inside the VM of `make e2e-kernel` (%s unset)\n", meshtest.BinDirEnv)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// run runs a command on h, bounded, failing t on error.
func run(t *testing.T, h *testnet.Host, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kernelDevice reads the WireGuard device of h through the kernel's generic
// netlink API (wgctrl in h's network namespace).
func kernelDevice(h *testnet.Host, name string) (*wgtypes.Device, error) {
	var dev *wgtypes.Device
	err := h.Do(func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		dev, err = c.Device(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wgctrl on %s, device %s: %w", h.Name, name, err)
	}
	if dev.Type != wgtypes.LinuxKernel {
		return nil, fmt.Errorf("device %s on %s is %s, want the kernel's", name, h.Name, dev.Type)
	}
	return dev, nil
}

// linkKind returns the kind of link name on h as `ip -d link` reports it.
func linkKind(t *testing.T, h *testnet.Host, name string) string {
	t.Helper()
	out := run(t, h, "ip", "-d", "-o", "link", "show", "dev", name)
	for _, k := range []string{"wireguard", "tun"} {
		if strings.Contains(out, " "+k+" ") {
			return k
		}
	}
	return out
}
