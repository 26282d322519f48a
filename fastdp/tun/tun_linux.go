// Package tun opens the Linux TUN device of the userspace data plane.
//
// The device is made persistent (TUNSETPERSIST) so that it, its addresses
// and its routes outlive the process: when the mesh daemon restarts, pods on
// the bridge keep their routes, and the new daemon attaches to the same
// device instead of creating a second one. The packet path is wireguard-go's
// own (tun.CreateTUNFromFile), which keeps its virtio-net header handling,
// TSO/USO segmentation offload and TCP/UDP GRO.
package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

const cloneDevicePath = "/dev/net/tun"

// flags are the TUN flags wireguard-go expects: IFF_VNET_HDR enables the
// offloads. An existing device is only adopted with the same type and
// queue mode, which the kernel checks in TUNSETIFF.
const flags = unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// ErrBusy is returned by Open when another process is attached to the device.
var ErrBusy = errors.New("TUN device is in use by another process")

// Open attaches to the persistent TUN device name in the network namespace
// of the calling thread, creating it when it does not exist, and sets its
// MTU. created reports whether this call made the device; a caller that
// fails later should then remove it (Delete or a netlink link delete).
func Open(name string, mtu int) (dev wgtun.Device, created bool, err error) {
	created = !exists(name)

	fd, err := unix.Open(cloneDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("failed to open %s: %w", cloneDevicePath, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, false, fmt.Errorf("invalid TUN device name %q: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return nil, false, fmt.Errorf("failed to attach to TUN device %q: %w", name, ErrBusy)
		}
		if errors.Is(err, unix.EINVAL) && !created {
			return nil, false, fmt.Errorf("failed to attach to TUN device %q (an interface of that name exists and is not a compatible TUN device): %w", name, err)
		}
		return nil, false, fmt.Errorf("failed to create TUN device %q: %w", name, err)
	}
	// From here on, a failure must not leave a device behind that this call
	// created: clearing persistence before the close makes the kernel delete it.
	fail := func(err error) (wgtun.Device, bool, error) {
		if created {
			_ = unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0)
		}
		unix.Close(fd)
		return nil, false, err
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fail(fmt.Errorf("failed to make TUN device %q persistent: %w", name, err))
	}
	// Non-blocking before the fd is handed to the Go poller, as in
	// wireguard-go's CreateTUN.
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(fmt.Errorf("failed to set TUN device %q non-blocking: %w", name, err))
	}
	// wireguard-go asks the MTU through a socket it opens on whatever thread
	// runs the asking goroutine, which may be in another namespace; this one
	// is opened here, in the device's namespace, and kept.
	ctl, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(fmt.Errorf("failed to open control socket for TUN device %q: %w", name, err))
	}
	file := os.NewFile(uintptr(fd), cloneDevicePath)
	dev, err = wgtun.CreateTUNFromFile(file, mtu)
	if err != nil {
		unix.Close(ctl)
		if created {
			if sc, serr := file.SyscallConn(); serr == nil {
				_ = sc.Control(func(fd uintptr) { _ = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 0) })
			}
		}
		file.Close()
		return nil, false, fmt.Errorf("failed to start TUN device %q: %w", name, err)
	}
	return &device{Device: dev, name: name, ctl: ctl}, created, nil
}

// device is wireguard-go's Linux TUN device with MTU answered in the
// device's own namespace.
type device struct {
	wgtun.Device
	name      string
	ctl       int
	closeOnce sync.Once
}

func (d *device) MTU() (int, error) {
	ifr, err := unix.NewIfreq(d.name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(d.ctl, unix.SIOCGIFMTU, ifr); err != nil {
		return 0, fmt.Errorf("failed to get MTU of TUN device %q: %w", d.name, err)
	}
	return int(ifr.Uint32()), nil
}

// Close detaches from the device, which stays (it is persistent).
func (d *device) Close() error {
	err := d.Device.Close()
	d.closeOnce.Do(func() { unix.Close(d.ctl) })
	return err
}

// Delete removes the persistent TUN device name from the network namespace
// of the calling thread. It fails with ErrBusy while a process is attached,
// and succeeds when the device does not exist.
func Delete(name string) error {
	if !exists(name) {
		return nil
	}
	fd, err := unix.Open(cloneDevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("failed to open %s: %w", cloneDevicePath, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("invalid TUN device name %q: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("failed to delete TUN device %q: %w", name, ErrBusy)
		}
		return fmt.Errorf("failed to attach to TUN device %q: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0); err != nil {
		return fmt.Errorf("failed to clear persistence of TUN device %q: %w", name, err)
	}
	return nil
}

// exists reports whether an interface called name exists in the network
// namespace of the calling thread.
func exists(name string) bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return false
	}
	return unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr) == nil
}
