package fastdp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// uapiDir is where wireguard-go's ipc package puts UAPI sockets.
const uapiDir = "/var/run/wireguard"

// uapiSocket is the UAPI socket of device name.
func uapiSocket(name string) string { return filepath.Join(uapiDir, name+".sock") }

// Reset removes everything fastdp creates in the namespace of opts: the
// WireGuard link (kernel or TUN), every link carrying a "mesh:" alias (the
// bridge), every route carrying RouteProtocol and a stale UAPI socket. It is
// idempotent. It stops a mesh-dataplane process serving the device
// (StopProcess). It refuses while a daemon's own wireguard-go still serves
// the device, since removing the link under a running daemon would only make it
// recreate it. IP forwarding is left on: other software may rely on it.
func Reset(ctx context.Context, opts Options) error {
	if err := opts.normalize(); err != nil {
		return err
	}
	sock := uapiSocket(opts.DeviceName)
	// A data-plane process outlives the daemon on purpose; a reset ends it.
	if _, err := StopProcess(ctx, opts); err != nil {
		return fmt.Errorf("data plane %q is still running: %w", opts.DeviceName, err)
	}
	if c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "unix", sock); err == nil {
		c.Close()
		return fmt.Errorf("data plane %q is still running (%s answers); stop the daemon first", opts.DeviceName, sock)
	}

	ns, err := openNetNS(opts.NetNSPath)
	if err != nil {
		return err
	}
	defer ns.close()
	nl, err := ns.netlinkHandle()
	if err != nil {
		return fmt.Errorf("failed to open netlink in network namespace %s: %w", ns, err)
	}
	defer nl.Close()

	var errs []error
	links, err := dump(nl.LinkList)
	if err != nil {
		return fmt.Errorf("failed to list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		ours := strings.HasPrefix(a.Alias, aliasPrefix) ||
			(a.Name == opts.DeviceName && (l.Type() == "wireguard" || l.Type() == "tuntap"))
		if !ours {
			continue
		}
		if a.Alias == aliasInner {
			if c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "unix", uapiSocket(a.Name)); err == nil {
				c.Close()
				errs = append(errs, fmt.Errorf("end-to-end device %q is still served by a running daemon; stop the daemon first", a.Name))
				continue
			}
		}
		if err := nl.LinkDel(l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("failed to remove link %q: %w", a.Name, err))
			continue
		}
		opts.Logger.Info("removed link", "component", "fastdp", "link", a.Name, "type", l.Type())
		if a.Alias == aliasInner {
			// The end-to-end device ran in the daemon, which is gone
			// (its UAPI socket answered nobody above, or the
			// daemon's did not): a socket file left by a crash goes.
			if err := os.Remove(uapiSocket(a.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("failed to remove stale UAPI socket of %q: %w", a.Name, err))
			}
		}
	}
	// Routes through the removed links went with them; these are the rest.
	routes, err := listOwnRoutes(nl, true)
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range routes {
		if err := nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("failed to remove route %s: %w", r.Dst, err))
		}
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("failed to remove stale UAPI socket %q: %w", sock, err))
	}
	return errors.Join(errs...)
}
