package fastdp

import (
	"context"
	"errors"
	"fmt"
)

// Serve runs the userspace data plane alone: it opens (or adopts) the
// persistent TUN device opts.DeviceName with MTU mtu, runs wireguard-go on
// it and serves the UAPI socket, until ctx ends. It configures nothing:
// the daemon does that through the UAPI socket with wgctrl, as it does for
// the kernel module. This is what cmd/mesh-dataplane runs, so that the
// daemon can restart without stopping the traffic (docs/architecture.md,
// "Restarts, crashes and leaving").
//
// It returns nil when ctx ends, leaving the TUN device in place (it is
// persistent), and an error when the device could not be opened, or when
// wireguard-go stopped on its own: its TUN device went away, or its UAPI
// socket was removed (`mesh reset`), so that a supervisor starts a fresh
// one.
func Serve(ctx context.Context, opts Options, mtu int) error {
	if err := opts.normalize(); err != nil {
		return err
	}
	if err := ValidMTU(mtu); err != nil {
		return err
	}
	log := opts.Logger.With("component", "fastdp", "device", opts.DeviceName)
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

	u := &userspaceImpl{name: opts.DeviceName, ns: ns, nl: nl, log: log}
	if _, _, err := u.ensure(mtu); err != nil {
		return err
	}
	dev, done := u.dev, u.done
	defer u.stop()
	log.Info("data plane serving", "uapi", uapiSocket(opts.DeviceName))
	select {
	case <-ctx.Done():
		log.Info("data plane stopping; the TUN device stays")
		return nil
	case <-dev.Wait():
		return errors.New("wireguard-go stopped (its TUN device failed or was removed)")
	case <-done:
		return fmt.Errorf("UAPI socket %s was closed or removed", uapiSocket(opts.DeviceName))
	}
}

// NeedsUserspace reports whether the daemon's --dataplane auto would pick
// the userspace data plane in the namespace of opts, as New decides it: a
// TUN device of that name exists (an earlier userspace run), or none
// exists and the kernel cannot make WireGuard links. A data-plane process
// run by a supervisor on every node (the mesh-dataplane DaemonSet) asks it
// so that it stays idle where the kernel module serves.
func NeedsUserspace(opts Options) (bool, error) {
	if err := opts.normalize(); err != nil {
		return false, err
	}
	ns, err := openNetNS(opts.NetNSPath)
	if err != nil {
		return false, err
	}
	defer ns.close()
	nl, err := ns.netlinkHandle()
	if err != nil {
		return false, fmt.Errorf("failed to open netlink in network namespace %s: %w", ns, err)
	}
	defer nl.Close()
	opts.Mode = ModeAuto
	kind, err := selectKind(nl, opts, opts.Logger)
	if err != nil {
		return false, err
	}
	return kind == ModeUserspace, nil
}
