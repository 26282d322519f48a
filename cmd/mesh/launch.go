package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/meshnet/mesh/daemon"
)

func launch(args []string, stderr io.Writer) error {
	cfg := daemon.DefaultConfig()
	fs := flag.NewFlagSet("mesh launch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "Usage: mesh launch [flags] [PEER...]\n\nRuns the mesh daemon in the foreground. PEER is host or host:port.\nThe mesh secret comes from --key-file (made by mesh keygen; recommended), or a\npassword from --password-file or the MESH_PASSWORD environment variable with\n--mesh-name or MESH_NAME; never from a flag (it would show in ps).\n\nFlags:\n")
	fs.StringVar(&cfg.Name, "name", "", "node name, unique in the mesh (default: the stored name, else the host name)")
	advertise := fs.String("advertise-addr", "", "IP address other peers use to reach this one (default: picked from the interfaces)")
	fs.IntVar(&cfg.Port, "port", cfg.Port, "gossip port, TCP and UDP")
	fs.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory for identity, keys and IPAM state")
	fs.StringVar(&cfg.Socket, "socket", cfg.Socket, "unix socket of the control API")
	fs.StringVar(&cfg.KeyFile, "key-file", "", "key file made by mesh keygen (mode 0600; during a rotation it holds the new key and the old one)")
	fs.Func("password-file", "file holding the mesh password, mode 0600 (repeat it for a rotation: the new password first)", func(s string) error {
		cfg.PasswordFiles = append(cfg.PasswordFiles, s)
		return nil
	})
	fs.StringVar(&cfg.MeshName, "mesh-name", os.Getenv("MESH_NAME"), "name of the mesh, the same on every member; salts the keys of passwords (default: $MESH_NAME)")
	fs.BoolVar(&cfg.AllowShortPassword, "allow-short-password", false, "accept a password shorter than 16 characters")
	fs.BoolVar(&cfg.AcceptLegacyKey, "accept-legacy-key", false, "also accept the previous release's key of the password, to upgrade a mesh node by node (see docs/architecture.md)")
	fs.BoolVar(&cfg.Insecure, "insecure", false, "allow running without a password: gossip unencrypted (not for production)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	var ipRanges []string
	fs.Func("ipalloc-range", "cluster range split among the peers for pod addresses, the same on every peer; once per address family for dual-stack (repeat the flag or give a comma list: 10.32.0.0/12,fd32::/48) (default "+cfg.IPAllocRange.String()+")", func(s string) error {
		ipRanges = append(ipRanges, s)
		return nil
	})
	fs.DurationVar(&cfg.ReclaimAfter, "ipalloc-reclaim-after", 0, "reclaim the free space of a peer silent this long (0: off; the same on every peer; see docs/ipam.md)")
	fs.StringVar(&cfg.Dataplane, "dataplane", cfg.Dataplane, "auto, kernel, userspace or none")
	fs.StringVar(&cfg.DataplaneProcess, "dataplane-process", cfg.DataplaneProcess, "where userspace wireguard-go runs: auto (a mesh-dataplane process that outlives daemon restarts, started when none runs), external (one a supervisor runs) or off (in the daemon)")
	fs.IntVar(&cfg.DPPort, "dp-port", cfg.DPPort, "WireGuard UDP port")
	fs.IntVar(&cfg.MTU, "mtu", 0, "overlay MTU (0: the underlay's minus 80)")
	fs.DurationVar(&cfg.Keepalive, "keepalive", cfg.Keepalive, "WireGuard persistent keepalive, for peers behind NAT (0: off)")
	fs.StringVar(&cfg.Bridge, "bridge", cfg.Bridge, "bridge for this node's pods")
	fs.BoolVar(&cfg.NoCNI, "no-cni", false, "do not install the CNI plugin and config")
	fs.StringVar(&cfg.CNIBinDir, "cni-bin-dir", cfg.CNIBinDir, "where to install mesh-cni")
	fs.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, "where to write "+daemon.CNIConfName)
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "address of /metrics, /healthz and /readyz (empty: off)")
	fs.BoolVar(&cfg.Kube, "kube", false, "take peers from Kubernetes Node objects and reclaim deleted nodes' ranges")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig for --kube (default: in-cluster)")
	fs.BoolVar(&cfg.NoPolicy, "no-policy", false, "with --kube, do not enforce NetworkPolicies (and remove mesh's nftables table)")
	fs.BoolVar(&cfg.NoMasquerade, "no-masquerade", false, "do not masquerade pod traffic leaving the cluster range (for an underlay that routes pod addresses)")
	fs.Var(&natFlag{cfg: &cfg}, "behind-nat", "this host can only connect out (behind a NAT gateway): attach to a peer named at launch, through which the others reach this node's gossip; auto: ask a peer named at launch (with --kube, another Node) to connect back, and attach if it cannot; false: neither (docs/routing.md)")
	fs.DurationVar(&cfg.ReachRecheck, "reach-recheck", cfg.ReachRecheck, "how often to check again whether peers can connect to this node, after the check at launch: a node that came to sit behind NAT or a firewall then attaches to a peer for its gossip, one reachable again detaches (0: never; docs/routing.md)")
	fs.StringVar((*string)(&cfg.GossipTiming), "gossip-timing", string(cfg.GossipTiming), "memberlist's timings: lan (a probe a second, 500 ms to answer) or wan (a probe every 5 s, 3 s to answer, dead after about a minute), for slow links or hosts that give the daemon little CPU (docs/scale.md)")
	fs.BoolVar(&cfg.NoRelay, "no-relay", false, "never carry traffic between two other nodes whose direct path is down (docs/routing.md)")
	fs.BoolVar(&cfg.RelayEndToEnd, "relay-end-to-end", cfg.RelayEndToEnd, "talk to peers reached through a relay inside a second WireGuard layer the relay cannot read (docs/routing.md); false relays hop by hop")
	fs.IntVar(&cfg.RelayPreference, "relay-preference", 0, "among relay paths of equal hops and latency, others prefer nodes with a higher value (-100 to 100; docs/routing.md)")
	noMasq := fs.String("no-masquerade-cidrs", "", "comma-separated destination CIDRs that pod traffic reaches without masquerade")
	fs.DurationVar(&cfg.PolicyWait, "policy-wait", cfg.PolicyWait, "with --kube, how long a pod's CNI ADD waits for its NetworkPolicy rules before it fails (fail closed)")
	fs.BoolVar(&cfg.NoPortIsolation, "no-port-isolation", false, "for benchmarks and debugging only: do not isolate pod ports on the bridge nor check underlay sources (removes the mesh-isolation tables)")
	peers, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if cfg.Kube && !daemon.KubeSupport {
		return execKube(args)
	}
	os.Unsetenv(execEnv) // not for the daemon's children
	cfg.Peers = peers
	cfg.Version = version
	if len(ipRanges) > 0 {
		if err := cfg.SetIPAllocRanges(ipRanges); err != nil {
			return err
		}
	}
	if cfg.NoMasqueradeCIDRs, err = parseCIDRs(*noMasq); err != nil {
		return fmt.Errorf("invalid --no-masquerade-cidrs: %w", err)
	}
	if cfg.Kube && cfg.Name == "" {
		// The DaemonSet passes the node name through the downward API.
		cfg.Name = os.Getenv("NODE_NAME")
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("invalid --log-level %q: %w", *logLevel, err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *advertise != "" {
		a, err := netip.ParseAddr(*advertise)
		if err != nil {
			return fmt.Errorf("invalid --advertise-addr %q: %w", *advertise, err)
		}
		cfg.AdvertiseAddr = a
	}
	if cfg.Password, err = readEnvPassword(len(cfg.PasswordFiles) > 0); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	d, err := daemon.Start(cfg)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		// A restart, not a leave: the node stays a member (mesh leave
		// leaves).
		cfg.Logger.Info("stopping on signal")
	case <-d.LeaveRequested():
		cfg.Logger.Info("stopping after leaving the mesh")
	case err := <-d.Done():
		cfg.Logger.Error("control API stopped", "error", err)
	}
	return d.Stop()
}

// parseCIDRs parses a comma-separated list of prefixes; empty is none.
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// readEnvPassword takes the password from MESH_PASSWORD unless a password
// file is given, and removes it from the environment so no child inherits
// it. Password files are read by the daemon, which reads them again for a
// rotation.
func readEnvPassword(haveFile bool) ([]byte, error) {
	env, inEnv := os.LookupEnv("MESH_PASSWORD")
	os.Unsetenv("MESH_PASSWORD")
	if haveFile {
		return nil, nil
	}
	if inEnv && env == "" {
		return nil, fmt.Errorf("MESH_PASSWORD is set but empty")
	}
	return []byte(env), nil
}

// natFlag is --behind-nat: a boolean flag (given alone it means true) that
// also takes "auto", the default.
type natFlag struct{ cfg *daemon.Config }

func (f *natFlag) IsBoolFlag() bool { return true }

func (f *natFlag) String() string {
	switch {
	case f.cfg == nil || (!f.cfg.BehindNAT && f.cfg.NATCheck):
		return "auto"
	case f.cfg.BehindNAT:
		return "true"
	default:
		return "false"
	}
}

func (f *natFlag) Set(s string) error {
	switch s {
	case "auto":
		f.cfg.BehindNAT, f.cfg.NATCheck = false, true
	case "true", "yes":
		f.cfg.BehindNAT, f.cfg.NATCheck = true, false
	case "false", "no":
		f.cfg.BehindNAT, f.cfg.NATCheck = false, false
	default:
		return fmt.Errorf("want auto, true or false, not %q", s)
	}
	return nil
}
