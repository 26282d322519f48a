// Package install puts the mesh-cni plugin and its network config where CNI
// runtimes look for them, and takes them away again. The daemon decides when
// (once the node can serve pods); this package knows only the files.
package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/atomicfile"
)

// Options say what to install where.
type Options struct {
	// Source is the mesh-cni binary to install (the daemon's: next to it).
	Source string
	// BinDir and ConfDir are the runtime's plugin and config directories.
	BinDir, ConfDir string
	// Socket is the daemon's control socket, written into the config for
	// the plugin to find the daemon.
	Socket string
}

// Install copies the plugin into BinDir and writes the conflist into
// ConfDir, each replaced atomically: a plugin run in progress keeps working
// on its open inode, and a runtime never reads half a config. It blocks for
// the copy and the fsyncs.
func Install(o Options) error {
	bin, err := os.Open(o.Source)
	if err != nil {
		return fmt.Errorf("failed to read the plugin %q: %w", o.Source, err)
	}
	defer bin.Close()
	if err := os.MkdirAll(o.BinDir, 0o755); err != nil {
		return fmt.Errorf("failed to create %q: %w", o.BinDir, err)
	}
	// Streamed: holding the 7 MB binary in memory would stay in the
	// daemon's footprint long after.
	if err := atomicfile.WriteFrom(filepath.Join(o.BinDir, api.CNIPluginName), bin, 0o755); err != nil {
		return err
	}
	conf, err := Conflist(o.BinDir, o.Socket)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.ConfDir, 0o755); err != nil {
		return fmt.Errorf("failed to create %q: %w", o.ConfDir, err)
	}
	return atomicfile.Write(filepath.Join(o.ConfDir, api.CNIConfName), conf, 0o644)
}

// Remove deletes what Install wrote; missing files are no error.
func Remove(binDir, confDir string) error {
	for _, p := range []string{filepath.Join(confDir, api.CNIConfName), filepath.Join(binDir, api.CNIPluginName)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("failed to remove %q: %w", p, err)
		}
	}
	return nil
}

// Conflist is the network config; the reference portmap plugin is chained
// when it is installed in binDir, so hostPort works. cniVersion stays 1.0.0
// for runtimes whose CNI library predates 1.1 (containerd 1.6 rejects it);
// newer ones read cniVersions and use 1.1.0, with GC and STATUS.
func Conflist(binDir, socket string) ([]byte, error) {
	plugins := []map[string]any{{"type": api.CNIPluginName, "socket": socket}}
	if fi, err := os.Stat(filepath.Join(binDir, "portmap")); err == nil && !fi.IsDir() {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true})
	}
	b, err := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "cniVersions": []string{"1.0.0", "1.1.0"}, "name": "mesh", "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
