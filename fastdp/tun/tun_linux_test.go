package tun

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/meshnet/mesh/internal/testnet"
)

// inTestNS runs fn on a locked thread inside a new, named network namespace
// that is deleted afterwards; the thread is discarded, never reused.
func inTestNS(t *testing.T, fn func(name string)) {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "tun-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			t.Errorf("setns: %v", err)
			return
		}
		fn(name)
	}()
	<-done
}

func link(t *testing.T, ns, dev string) string {
	out, _ := exec.Command("ip", "-n", ns, "-o", "link", "show", dev).CombinedOutput()
	return string(out)
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
		if !strings.Contains(link(t, ns, "tt0"), "tt0") {
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
		if l := link(t, ns, "tt0"); strings.Contains(l, "tt0:") {
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
		if out, err := exec.Command("ip", "-n", ns, "link", "add", "br0", "type", "bridge").CombinedOutput(); err != nil {
			t.Errorf("add bridge: %v: %s", err, out)
			return
		}
		if dev, _, err := Open("br0", 1400); err == nil {
			dev.Close()
			t.Errorf("Open on a bridge succeeded")
		}
		if !strings.Contains(link(t, ns, "br0"), "br0") {
			t.Errorf("the bridge was removed")
		}
	})
}
