package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/atomicfile"
)

// CNIConfName is the conflist the daemon writes (defined in api, the
// contract shared with tests and tools).
const CNIConfName = api.CNIConfName

const cniPluginName = api.CNIPluginName

// maybeInstallCNI installs the plugin once this node can serve pods (the
// one readiness predicate, d.ready, which /readyz also answers with). The
// kubelet marks a node Ready as soon as a CNI config appears, so writing it
// earlier would send pods to a node that can only answer "try again later".
func (d *Daemon) maybeInstallCNI() {
	d.mu.Lock()
	done := d.cniDone
	d.mu.Unlock()
	if d.cfg.NoCNI || done || d.ready() != nil {
		return
	}
	if err := installCNI(d.cfg); err != nil {
		d.mu.Lock()
		repeated := d.cniErr == err.Error()
		d.cniErr = err.Error()
		d.mu.Unlock()
		if !repeated {
			d.log.Error("failed to install the CNI plugin; pods cannot start on this node (retrying)", "error", err)
		}
		return
	}
	d.mu.Lock()
	d.cniDone = true
	d.mu.Unlock()
	d.log.Info("installed the CNI plugin", "bin", filepath.Join(d.cfg.CNIBinDir, cniPluginName), "conf", filepath.Join(d.cfg.CNIConfDir, CNIConfName))
}

func installCNI(cfg Config) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("failed to find the mesh executable: %w", err)
	}
	src := filepath.Join(filepath.Dir(self), cniPluginName)
	bin, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("failed to read the plugin next to mesh: %w", err)
	}
	defer bin.Close()
	dst := filepath.Join(cfg.CNIBinDir, cniPluginName)
	if err := os.MkdirAll(cfg.CNIBinDir, 0o755); err != nil {
		return fmt.Errorf("failed to create %q: %w", cfg.CNIBinDir, err)
	}
	// Renaming over the old file keeps a plugin run in progress working
	// on its open inode.
	// Streamed: holding the 7 MB binary in memory would stay in the
	// daemon's footprint long after.
	if err := atomicfile.WriteFrom(dst, bin, 0o755); err != nil {
		return err
	}
	conf, err := cniConflist(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.CNIConfDir, 0o755); err != nil {
		return fmt.Errorf("failed to create %q: %w", cfg.CNIConfDir, err)
	}
	return atomicfile.Write(filepath.Join(cfg.CNIConfDir, CNIConfName), conf, 0o644)
}

// cniConflist is the network config; the reference portmap plugin is
// chained when installed, so hostPort works. cniVersion stays 1.0.0 for
// runtimes whose CNI library predates 1.1 (containerd 1.6 rejects it);
// newer ones read cniVersions and use 1.1.0, with GC and STATUS.
func cniConflist(cfg Config) ([]byte, error) {
	plugins := []map[string]any{{"type": cniPluginName, "socket": cfg.Socket}}
	if fi, err := os.Stat(filepath.Join(cfg.CNIBinDir, "portmap")); err == nil && !fi.IsDir() {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	b, err := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "cniVersions": []string{"1.0.0", "1.1.0"}, "name": "mesh", "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
