package install

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/meshnet/mesh/api"
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
			binDir, socket := t.TempDir(), "/run/mesh/test.sock"
			if tt.withPortmap {
				if err := os.WriteFile(filepath.Join(binDir, "portmap"), nil, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			b, err := Conflist(binDir, socket)
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
			if conf.Plugins[0].Socket != socket {
				t.Fatalf("socket = %q", conf.Plugins[0].Socket)
			}
		})
	}
}

// TestInstallRemove: the files land with their modes, a second install
// replaces them, and Remove takes both away (twice is fine).
func TestInstallRemove(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src-plugin")
	if err := os.WriteFile(src, []byte("plugin v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := Options{Source: src, BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), Socket: "/run/mesh/mesh.sock"}
	for _, content := range []string{"plugin v1", "plugin v2"} {
		if err := os.WriteFile(src, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := Install(o); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(o.BinDir, api.CNIPluginName)
		got, err := os.ReadFile(bin)
		if err != nil || string(got) != content {
			t.Fatalf("installed plugin = %q, %v; want %q", got, err, content)
		}
		if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o755 {
			t.Errorf("plugin mode %v", fi.Mode())
		}
		if fi, err := os.Stat(filepath.Join(o.ConfDir, api.CNIConfName)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("conflist: %v, %v", fi, err)
		}
	}
	if err := Install(Options{Source: filepath.Join(dir, "missing"), BinDir: o.BinDir, ConfDir: o.ConfDir}); err == nil {
		t.Error("install from a missing plugin succeeded")
	}
	for range 2 {
		if err := Remove(o.BinDir, o.ConfDir); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(o.BinDir, api.CNIPluginName), filepath.Join(o.ConfDir, api.CNIConfName)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after Remove: %v", p, err)
		}
	}
}
