package daemon

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/cni/install"
)

// CNIConfName is the conflist the daemon writes (defined in api, the
// contract shared with tests and tools).
const CNIConfName = api.CNIConfName

// maybeInstallCNI installs the plugin once this node can serve pods (the
// one readiness predicate, d.ready, which /readyz also answers with). The
// kubelet marks a node Ready as soon as a CNI config appears, so writing it
// earlier would send pods to a node that can only answer "try again later".
func (d *Daemon) maybeInstallCNI() {
	if d.cfg.NoCNI || d.cniDone.Load() || d.ready() != nil {
		return
	}
	if err := installCNI(d.cfg); err != nil {
		if d.cniErr.set(err) {
			d.log.Error("failed to install the CNI plugin; pods cannot start on this node (retrying)", "error", err)
		}
		return
	}
	d.cniDone.Store(true)
	d.log.Info("installed the CNI plugin", "bin", filepath.Join(d.cfg.CNIBinDir, api.CNIPluginName), "conf", filepath.Join(d.cfg.CNIConfDir, CNIConfName))
}

func installCNI(cfg Config) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("failed to find the mesh executable: %w", err)
	}
	return install.Install(install.Options{
		Source: filepath.Join(filepath.Dir(self), api.CNIPluginName),
		BinDir: cfg.CNIBinDir, ConfDir: cfg.CNIConfDir, Socket: cfg.Socket,
	})
}
