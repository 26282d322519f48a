package attach

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// Plugin runs the CNI operations of an attachment. CNI is the real one;
// the interface exists for unit tests of the Manager's bookkeeping.
type Plugin interface {
	// Add wires ifName in the namespace at netns and returns its
	// addresses and gateways.
	Add(ctx context.Context, containerID, ifName, netns string) (Addresses, error)
	// Del undoes Add; netns is "" when the namespace is gone.
	Del(ctx context.Context, containerID, ifName, netns string) error
}

// CNI runs the installed network config through libcni, exactly as a
// container runtime would: the config file the daemon wrote, the plugins
// from the runtime's plugin directories.
type CNI struct {
	// Conflist is the network configuration file, e.g.
	// /etc/cni/net.d/10-mesh.conflist.
	Conflist string
	// BinDirs are searched for the plugins (CNI_PATH).
	BinDirs []string
	// CacheDir keeps libcni's cached results, which DEL hands to chained
	// plugins.
	CacheDir string
}

// ErrNotInstalled is wrapped when the network config is not there yet:
// the daemon writes it once it owns a range and its bridge is up.
var ErrNotInstalled = errors.New("the mesh CNI config is not installed yet")

func (c CNI) load() (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	if _, err := os.Stat(c.Conflist); errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w (%s missing; the daemon writes it once it owns an address range)", ErrNotInstalled, c.Conflist)
	}
	list, err := libcni.NetworkConfFromFile(c.Conflist)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to load CNI config %q: %w", c.Conflist, err)
	}
	return libcni.NewCNIConfigWithCacheDir(c.BinDirs, c.CacheDir, nil), list, nil
}

func runtimeConf(containerID, ifName, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: containerID, IfName: ifName, NetNS: netns}
}

// Addresses are what an ADD wired, each address a host prefix. Address
// and Gateway are of the mesh's first family: IPv4, or IPv6 in an
// IPv6-only mesh. Address6 and Gateway6 are the IPv6 ones of a dual-stack
// mesh (the same convention as api.Allocation), empty otherwise.
type Addresses struct {
	Address  string `json:"address,omitempty"`
	Gateway  string `json:"gateway,omitempty"`
	Address6 string `json:"address6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
}

// Add runs CNI ADD over the whole conflist.
func (c CNI) Add(ctx context.Context, containerID, ifName, netns string) (Addresses, error) {
	cfg, list, err := c.load()
	if err != nil {
		return Addresses{}, err
	}
	res, err := cfg.AddNetworkList(ctx, list, runtimeConf(containerID, ifName, netns))
	if err != nil {
		return Addresses{}, fmt.Errorf("CNI ADD of %s in netns %q failed: %w", ifName, netns, err)
	}
	cur, err := types100.NewResultFromResult(res)
	if err != nil {
		return Addresses{}, fmt.Errorf("CNI ADD of %s in netns %q: unreadable result: %w", ifName, netns, err)
	}
	a := resultAddresses(cur)
	if a.Address == "" {
		return Addresses{}, fmt.Errorf("CNI ADD of %s in netns %q returned no address", ifName, netns)
	}
	return a, nil
}

// resultAddresses picks the first address of each family from an ADD
// result (mesh-cni lists IPv4 first, then IPv6).
func resultAddresses(res *types100.Result) Addresses {
	var v4, v6 *types100.IPConfig
	for _, ip := range res.IPs {
		switch {
		case ip.Address.IP.To4() != nil:
			if v4 == nil {
				v4 = ip
			}
		case ip.Address.IP.To16() != nil:
			if v6 == nil {
				v6 = ip
			}
		}
	}
	str := func(ip *types100.IPConfig) (addr, gw string) {
		if ip == nil {
			return "", ""
		}
		if ip.Gateway != nil {
			gw = ip.Gateway.String()
		}
		return ip.Address.String(), gw
	}
	var a Addresses
	if v4 == nil {
		// An IPv6-only mesh: its one address is the first family's.
		a.Address, a.Gateway = str(v6)
		return a
	}
	a.Address, a.Gateway = str(v4)
	a.Address6, a.Gateway6 = str(v6)
	return a
}

// Del runs CNI DEL over the whole conflist.
func (c CNI) Del(ctx context.Context, containerID, ifName, netns string) error {
	cfg, list, err := c.load()
	if err != nil {
		return err
	}
	if err := cfg.DelNetworkList(ctx, list, runtimeConf(containerID, ifName, netns)); err != nil {
		return fmt.Errorf("CNI DEL of %s (container %s) failed: %w", ifName, containerID, err)
	}
	return nil
}
