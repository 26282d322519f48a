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
	// Add wires ifName in the namespace at netns and returns its address
	// and gateway.
	Add(ctx context.Context, containerID, ifName, netns string) (address, gateway string, err error)
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

// Add runs CNI ADD over the whole conflist.
func (c CNI) Add(ctx context.Context, containerID, ifName, netns string) (string, string, error) {
	cfg, list, err := c.load()
	if err != nil {
		return "", "", err
	}
	res, err := cfg.AddNetworkList(ctx, list, runtimeConf(containerID, ifName, netns))
	if err != nil {
		return "", "", fmt.Errorf("CNI ADD of %s in netns %q failed: %w", ifName, netns, err)
	}
	cur, err := types100.NewResultFromResult(res)
	if err != nil {
		return "", "", fmt.Errorf("CNI ADD of %s in netns %q: unreadable result: %w", ifName, netns, err)
	}
	if len(cur.IPs) == 0 {
		return "", "", fmt.Errorf("CNI ADD of %s in netns %q returned no address", ifName, netns)
	}
	gw := ""
	if cur.IPs[0].Gateway != nil {
		gw = cur.IPs[0].Gateway.String()
	}
	return cur.IPs[0].Address.String(), gw, nil
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
