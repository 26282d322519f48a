package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/daemon"
)

func rmpeer(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh rmpeer", stderr)
	setUsage(fs, stderr, "Usage: mesh rmpeer NAME\n\nRemoves a dead peer: its address ranges go to their heirs (the owners of\nthe addresses just below them) and its reservations are released.\nRun it on one node, once the peer is surely dead.\n\nFlags:\n")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: mesh rmpeer NAME")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := api.NewClient(*socket).RemovePeer(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed %s: %d range(s) tombstoned for their heirs\n", pos[0], n)
	return nil
}

// forgetIdentityHelp says exactly what the command does and does not do.
const forgetIdentityHelp = `Usage: mesh forget-identity NAME

Releases, on this node only, the binding of the node name NAME to the
signing identity this node first saw for it. The next identity that
announces NAME is bound to it instead (trust on first use). Use it when
the host of NAME was reimaged or lost its state dir (signing.key) and
comes back with a new identity, which the other nodes refuse until then
(mesh status names it under problems).

It changes nothing on the other nodes: run it on every node that names
NAME under problems. Run it only once the old host of NAME is gone for
good; while the binding is released, any holder of the mesh secret that
announces NAME first gets it.

Flags:
`

func forgetIdentity(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh forget-identity", stderr)
	setUsage(fs, stderr, forgetIdentityHelp)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "Usage: mesh forget-identity NAME")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	released, err := api.NewClient(*socket).ForgetIdentity(ctx, pos[0])
	if err != nil {
		return err
	}
	if released {
		fmt.Fprintf(stdout, "released the identity binding of %s on this node; the next identity announcing it is bound\n", pos[0])
	} else {
		fmt.Fprintf(stdout, "%s was bound to no identity on this node\n", pos[0])
	}
	return nil
}

// leave makes the daemon leave the mesh gracefully, then waits until it
// has stopped (its socket no longer answers).
func leave(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh leave", stderr)
	setUsage(fs, stderr, "Usage: mesh leave\n\nLeaves the mesh gracefully: the other nodes show this one as left and drop\nits WireGuard peer at once. Then the daemon stops. A stop by SIGTERM (a\nrestart, an upgrade) is no leave: the others keep this node's peer.\n\nFlags:\n")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 0 {
		fmt.Fprintln(stderr, "Usage: mesh leave")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := api.NewClient(*socket)
	if err := c.Leave(ctx); err != nil {
		return err
	}
	for {
		if _, err := c.Status(ctx); errors.Is(err, api.ErrDaemonUnreachable) && ctx.Err() == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("left the mesh, but the daemon still answers on %s", *socket)
		case <-time.After(100 * time.Millisecond):
		}
	}
	fmt.Fprintln(stdout, "left the mesh; the daemon has stopped")
	return nil
}

// reset undoes what mesh did to this host, through daemon.Reset. It works
// without the daemon (and refuses while a daemon still runs the data plane).
func reset(args []string, stdout, stderr io.Writer) error {
	def := daemon.DefaultResetOptions()
	fs := flag.NewFlagSet("mesh reset", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.Bool("state", false, "also remove the state dir (identity, keys, IPAM allocations): the node comes back as a new peer")
	stateDir := fs.String("state-dir", def.StateDir, "state dir to remove with --state")
	binDir := fs.String("cni-bin-dir", def.CNIBinDir, "where mesh-cni was installed")
	confDir := fs.String("cni-conf-dir", def.CNIConfDir, "where "+daemon.CNIConfName+" was written")
	setUsage(fs, stderr, "Usage: mesh reset [flags]\n\nRemoves every interface, route, nftables table and CNI file mesh made on this\nhost. Refused while a daemon still runs the data plane.\n\nFlags:\n")
	socket := fs.String("socket", def.Socket, "unix socket of the daemon's control API (reset is refused while a daemon answers on it)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := daemon.Reset(ctx, daemon.ResetOptions{
		Socket: *socket, WGDevice: def.WGDevice, CNIBinDir: *binDir, CNIConfDir: *confDir,
		StateDir: *stateDir, RemoveState: *state,
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "mesh interfaces, routes, nftables tables and CNI files removed")
	return nil
}
