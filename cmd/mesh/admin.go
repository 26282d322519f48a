package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/daemon"
	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/isolation"
	"github.com/meshnet/mesh/policy"
)

func rmpeer(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh rmpeer", stderr)
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
	fmt.Fprintf(stdout, "took over %d range(s) of %s\n", n, pos[0])
	return nil
}

// reset undoes what mesh did to this host. It works without the daemon
// (and refuses while a daemon still runs the data plane).
func reset(args []string, stdout, stderr io.Writer) error {
	def := daemon.DefaultConfig()
	fs := flag.NewFlagSet("mesh reset", flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.Bool("state", false, "also remove the state dir (identity, keys, IPAM allocations): the node comes back as a new peer")
	stateDir := fs.String("state-dir", def.StateDir, "state dir to remove with --state")
	device := fs.String("wg-device", def.WGDevice, "WireGuard device name")
	binDir := fs.String("cni-bin-dir", def.CNIBinDir, "where mesh-cni was installed")
	confDir := fs.String("cni-conf-dir", def.CNIConfDir, "where "+daemon.CNIConfName+" was written")
	if _, err := parseInterspersed(fs, args); err != nil {
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := fastdp.DefaultOptions()
	opts.DeviceName = *device
	if err := fastdp.Reset(ctx, opts); err != nil {
		return fmt.Errorf("failed to reset the data plane: %w", err)
	}
	if err := policy.NewNFT().Remove(); err != nil {
		return fmt.Errorf("failed to remove the NetworkPolicy table: %w", err)
	}
	if err := isolation.New().Remove(); err != nil {
		return fmt.Errorf("failed to remove the port-isolation tables: %w", err)
	}
	for _, p := range []string{filepath.Join(*confDir, daemon.CNIConfName), filepath.Join(*binDir, "mesh-cni")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("failed to remove %q: %w", p, err)
		}
	}
	if *state {
		if err := emptyDir(*stateDir); err != nil {
			return err
		}
	}
	fmt.Fprintln(stdout, "mesh interfaces, routes, nftables tables and CNI files removed")
	return nil
}

// emptyDir removes what is in dir but not dir itself, which is often a
// mount point (a hostPath volume, a bind mount) that cannot be removed.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to read state dir %q: %w", dir, err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("failed to remove %q: %w", p, err)
		}
	}
	return nil
}
