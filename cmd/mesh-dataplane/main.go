// Command mesh-dataplane is mesh's userspace data plane on its own:
// wireguard-go on the persistent TUN device and its UAPI socket
// (/var/run/wireguard/<device>.sock), and nothing else: no gossip, no IPAM,
// no policy, no keys of its own. The mesh daemon configures it through the
// UAPI socket with wgctrl, as it configures the kernel module, so the
// daemon can restart, crash or be upgraded while this process keeps
// forwarding (docs/architecture.md, "Restarts, crashes and leaving").
//
// The daemon starts it when none runs (detached, so that it outlives the
// daemon), or a supervisor runs it (the mesh-dataplane DaemonSet, with the
// daemon's --dataplane-process external, and --idle-with-kernel so that it
// stays idle on nodes whose kernel has WireGuard). It runs until SIGTERM or SIGINT,
// which leave the TUN device in place; `mesh leave` and `mesh reset` stop
// it. It exits with an error when its TUN device or UAPI socket is
// removed, so that the daemon or the supervisor starts a fresh one.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshnet/mesh/fastdp"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mesh-dataplane:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mesh-dataplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: mesh-dataplane [flags]\n\nRuns wireguard-go on the TUN device and serves its UAPI socket until\nSIGTERM, which leaves the device in place. The mesh daemon configures it.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	device := fs.String("device", fastdp.DefaultDeviceName, "WireGuard (TUN) device")
	mtu := fs.Int("mtu", fastdp.DefaultMTU, "MTU of a device created here (the daemon sets it afterwards)")
	netns := fs.String("netns", "", "network namespace to work in (default: this process's)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	idleWithKernel := fs.Bool("idle-with-kernel", false, "create nothing and wait for SIGTERM where the daemon's --dataplane auto uses the kernel module (no TUN device of this name, and the kernel makes WireGuard links): for a supervisor that runs it on every node")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *showVersion {
		fmt.Fprintln(os.Stdout, "mesh-dataplane", version)
		return nil
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("invalid --log-level %q: %w", *logLevel, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("process", "mesh-dataplane")
	// Its stderr may be a pipe whose reader (the daemon that started it)
	// is gone: a log line must then fail, not kill the data plane.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	opts := fastdp.Options{Mode: fastdp.ModeUserspace, DeviceName: *device, NetNSPath: *netns, Logger: log}
	log.Info("mesh-dataplane starting", "version", version, "device", *device, "pid", os.Getpid())
	if *idleWithKernel {
		need, err := fastdp.NeedsUserspace(opts)
		if err != nil {
			return err
		}
		if !need {
			log.Info("the kernel module serves WireGuard here: idle until stopped")
			<-ctx.Done()
			return nil
		}
	}
	if err := fastdp.Serve(ctx, opts, *mtu); err != nil {
		log.Error("mesh-dataplane stopped", "err", err)
		return err
	}
	log.Info("mesh-dataplane stopped")
	return nil
}
