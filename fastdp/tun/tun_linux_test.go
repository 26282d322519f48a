package tun

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

// inTestNS runs fn on a thread inside a throwaway network namespace,
// passing its path; the thread is discarded afterwards, never reused.
func inTestNS(t *testing.T, fn func(ns string)) {
	t.Helper()
	ns := netnstest.New(t)
	if err := netnstest.Do(ns, func() error { fn(ns); return nil }); err != nil {
		t.Fatal(err)
	}
}

func link(ns, dev string) string {
	out, _ := netnstest.Exec(ns, "ip", "-o", "link", "show", dev)
	return out
}

func TestPersistentAdoptDelete(t *testing.T) {
	testnet.RequireRoot(t)
	inTestNS(t, func(ns string) {
		dev, created, err := Open("tt0", 1400)
		if err != nil || !created {
			t.Errorf("Open new: created=%v err=%v", created, err)
			return
		}
		if mtu, err := dev.MTU(); err != nil || mtu != 1400 {
			t.Errorf("MTU = %d, %v", mtu, err)
		}
		if dev.BatchSize() <= 1 {
			t.Errorf("BatchSize = %d: offloads (IFF_VNET_HDR) are off", dev.BatchSize())
		}
		// A second process (here: descriptor) cannot attach meanwhile.
		if _, _, err := Open("tt0", 1400); !errors.Is(err, ErrBusy) {
			t.Errorf("second Open = %v, want ErrBusy", err)
		}
		if err := Delete("tt0"); !errors.Is(err, ErrBusy) {
			t.Errorf("Delete while attached = %v, want ErrBusy", err)
		}
		if err := dev.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if !strings.Contains(link(ns, "tt0"), "tt0") {
			t.Errorf("device gone after Close; it should persist")
		}

		dev, created, err = Open("tt0", 1300)
		if err != nil || created {
			t.Errorf("Open existing: created=%v err=%v", created, err)
			return
		}
		if mtu, _ := dev.MTU(); mtu != 1300 {
			t.Errorf("adopted MTU = %d, want 1300", mtu)
		}
		dev.Close()

		if err := Delete("tt0"); err != nil {
			t.Errorf("Delete: %v", err)
		}
		if l := link(ns, "tt0"); strings.Contains(l, "tt0:") {
			t.Errorf("device still there after Delete: %s", l)
		}
		if err := Delete("tt0"); err != nil {
			t.Errorf("second Delete: %v", err)
		}
	})
}

func TestOpenRefusesOtherLink(t *testing.T) {
	testnet.RequireRoot(t)
	inTestNS(t, func(ns string) {
		if _, err := netnstest.Exec(ns, "ip", "link", "add", "br0", "type", "bridge"); err != nil {
			t.Errorf("add bridge: %v", err)
			return
		}
		if dev, _, err := Open("br0", 1400); err == nil {
			dev.Close()
			t.Errorf("Open on a bridge succeeded")
		}
		if !strings.Contains(link(ns, "br0"), "br0") {
			t.Errorf("the bridge was removed")
		}
	})
}
