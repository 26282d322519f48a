// Package cni is the logic of mesh-cni, the CNI plugin that wires pods to the
// node's mesh bridge. It talks to the daemon only through the control API's
// unix socket (package api), so the binary stays small and starts fast: it is
// started once per pod operation and its start time is part of pod start
// latency.
//
// Each pod gets a veth pair: one end in the pod's netns (CNI_IFNAME) holding
// the pod's address as a host prefix, the other on the node's bridge, which
// holds the node's overlay IP (the gateway) as a host prefix. The pod
// reaches the gateway through an on-link route and everything else through a
// default route via the gateway. See docs/cni.md.
package cni

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultTimeout bounds one CNI operation's calls to the daemon. The
// kubelet's own timeout for a CNI call is longer; failing first gives it an
// error message instead of a killed plugin.
const DefaultTimeout = 20 * time.Second

// defaultBridge is fastdp's default bridge name, used when the daemon does
// not name one (package fastdp is not imported to keep the binary small).
const defaultBridge = "mesh"

// hostVethPrefix starts the name of every host-side veth of mesh-cni.
const hostVethPrefix = "vmesh"

// HostVethPrefix is hostVethPrefix for the daemon's port-isolation rules,
// which tell pod ports by it.
const HostVethPrefix = hostVethPrefix

// PluginInfo lists the CNI versions mesh-cni speaks: 1.1.0 and the older
// ones a kubelet may still send.
var PluginInfo = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Plugin implements the CNI commands. The zero value is ready to use.
type Plugin struct {
	// HostNS is the path of the netns holding the bridge; "" means the
	// plugin's own, which is where the runtime starts it. Tests point it
	// at a throwaway namespace.
	HostNS string
	// Timeout bounds the daemon calls of one operation; 0 is DefaultTimeout.
	Timeout time.Duration
	// Stdout receives ADD's result; nil means os.Stdout.
	Stdout io.Writer
}

// Funcs returns the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			ctx, cancel := p.context()
			defer cancel()
			res, err := p.Add(ctx, args)
			if err != nil {
				return err
			}
			return p.print(res, args.StdinData)
		},
		Del:    p.wrap(p.Del),
		Check:  p.wrap(p.Check),
		GC:     p.wrap(p.GC),
		Status: p.wrap(p.Status),
	}
}

func (p *Plugin) wrap(fn func(context.Context, *skel.CmdArgs) error) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		ctx, cancel := p.context()
		defer cancel()
		return fn(ctx, args)
	}
}

func (p *Plugin) context() (context.Context, context.CancelFunc) {
	t := p.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	return context.WithTimeout(context.Background(), t)
}

func (p *Plugin) stdout() io.Writer {
	if p.Stdout == nil {
		return os.Stdout
	}
	return p.Stdout
}

// HostVethName is the name of the host end of the veth of (containerID,
// ifName): "vmesh" and 8 hex digits of a hash, 13 characters, below the
// kernel's 15. Deriving it lets DEL find the veth without any state.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return hostVethPrefix + hex.EncodeToString(sum[:4])
}
