package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestCNIConflist(t *testing.T) {
	tests := []struct {
		name        string
		withPortmap bool
		plugins     []string
	}{
		{"alone", false, []string{"mesh-cni"}},
		{"portmap chained when installed", true, []string{"mesh-cni", "portmap"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.CNIBinDir = t.TempDir()
			if tt.withPortmap {
				if err := os.WriteFile(filepath.Join(cfg.CNIBinDir, "portmap"), nil, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			b, err := cniConflist(cfg)
			if err != nil {
				t.Fatal(err)
			}
			var conf struct {
				CNIVersion  string   `json:"cniVersion"`
				CNIVersions []string `json:"cniVersions"`
				Name        string   `json:"name"`
				Plugins     []struct {
					Type   string `json:"type"`
					Socket string `json:"socket"`
				} `json:"plugins"`
			}
			if err := json.Unmarshal(b, &conf); err != nil {
				t.Fatal(err)
			}
			if conf.Name != "mesh" || conf.CNIVersion != "1.0.0" || len(conf.CNIVersions) != 2 || conf.CNIVersions[1] != "1.1.0" {
				t.Fatalf("conflist header = %+v", conf)
			}
			if len(conf.Plugins) != len(tt.plugins) {
				t.Fatalf("plugins = %+v, want %v", conf.Plugins, tt.plugins)
			}
			for i, p := range conf.Plugins {
				if p.Type != tt.plugins[i] {
					t.Fatalf("plugin %d = %s, want %s", i, p.Type, tt.plugins[i])
				}
			}
			if conf.Plugins[0].Socket != cfg.Socket {
				t.Fatalf("socket = %q", conf.Plugins[0].Socket)
			}
		})
	}
}
