package daemon

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/isolation"
)

type nopTransport struct{}

func (nopTransport) Broadcast([]byte)            {}
func (nopTransport) SendTo(string, []byte) error { return nil }

// TestIsolationFailureIsAProblem: tables that cannot be programmed make
// syncIsolation (and so an allocation) fail, and are reported until they
// can be.
func TestIsolationFailureIsAProblem(t *testing.T) {
	cfg := ipam.DefaultConfig()
	cfg.Self, cfg.SelfID, cfg.StateFile = "n1", "0123456789abcdef0123456789abcdef", filepath.Join(t.TempDir(), "ipam.json")
	cfg.InitialPeerCount = 1
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := ipam.New(cfg, nopTransport{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	d := &Daemon{cfg: Config{Bridge: "a-bridge-name-too-long", WGDevice: "mesh-wg"}, ipam: a, iso: isolation.New(), log: cfg.Logger}
	err = d.syncIsolation()
	if err == nil || !strings.Contains(err.Error(), "invalid bridge name") {
		t.Fatalf("syncIsolation with an invalid bridge = %v, want an error naming it", err)
	}
	if d.isoErr == nil {
		t.Errorf("the failure is not kept for status")
	}
}

// TestNoDataplaneNoIsolation: with --dataplane none (whose data plane is
// the no-op fastdp.None, not nil) the daemon programs no isolation tables:
// docs/architecture.md, "Isolation".
func TestNoDataplaneNoIsolation(t *testing.T) {
	d := &Daemon{cfg: Config{Dataplane: DataplaneNone}, dp: fastdp.None(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d.startIsolation()
	if d.iso != nil {
		t.Fatalf("isolation tables set up without a data plane")
	}
	if err := d.syncIsolation(); err != nil {
		t.Fatalf("syncIsolation without a data plane: %v", err)
	}
}
