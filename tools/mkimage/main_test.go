package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestMkimage builds an image of two "binaries" the way `make image` does
// and checks what a container runtime will see: the tag, the entrypoint and
// a layer holding the files at /usr/local/bin with mode 0755, owned by root,
// under parent directories.
func TestMkimage(t *testing.T) {
	dir := t.TempDir()
	mesh := filepath.Join(dir, "mesh")
	cni := filepath.Join(dir, "mesh-cni")
	if err := os.WriteFile(mesh, []byte("mesh binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cni, []byte("cni binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	if err := run([]string{"-o", out, "-name", "mesh:test", "-entrypoint", `["/usr/local/bin/mesh","launch"]`, mesh, cni + ":/opt/mesh/mesh-cni"}); err != nil {
		t.Fatalf("mkimage: %v", err)
	}

	tag, err := name.NewTag("mesh:test")
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("tarball is not loadable as mesh:test: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr/local/bin/mesh", "launch"}; !reflect.DeepEqual(cf.Config.Entrypoint, want) {
		t.Errorf("entrypoint = %q, want %q", cf.Config.Entrypoint, want)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform = %s/%s, want linux/<arch>", cf.OS, cf.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("got %d layers, want 1 (empty base + files)", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type entry struct {
		typ     byte
		mode    int64
		content string
	}
	got := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want 0:0", h.Name, h.Uid, h.Gid)
		}
		data, _ := io.ReadAll(tr)
		got[h.Name] = entry{h.Typeflag, h.Mode, string(data)}
	}
	want := map[string]entry{
		"usr/":               {tar.TypeDir, 0o755, ""},
		"usr/local/":         {tar.TypeDir, 0o755, ""},
		"usr/local/bin/":     {tar.TypeDir, 0o755, ""},
		"usr/local/bin/mesh": {tar.TypeReg, 0o755, "mesh binary"},
		"opt/":               {tar.TypeDir, 0o755, ""},
		"opt/mesh/":          {tar.TypeDir, 0o755, ""},
		"opt/mesh/mesh-cni":  {tar.TypeReg, 0o755, "cni binary"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layer entries:\n got %v\nwant %v", got, want)
	}

	// Reproducible: the same inputs give the same image.
	out2 := filepath.Join(dir, "image2.tar")
	if err := run([]string{"-o", out2, "-name", "mesh:test", "-entrypoint", `["/usr/local/bin/mesh","launch"]`, mesh, cni + ":/opt/mesh/mesh-cni"}); err != nil {
		t.Fatal(err)
	}
	img2, err := tarball.ImageFromPath(out2, &tag)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same files differ: %s and %s", d1, d2)
	}
}

func TestMkimageErrors(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.tar")
	for _, args := range [][]string{
		{f},         // no -o
		{"-o", out}, // no files
		{"-o", out, filepath.Join(dir, "missing")},
		{"-o", out, f + ":relative/path"},
		{"-o", out, "-entrypoint", "mesh launch", f},
		{"-o", out, "-name", "Not A Name", f},
		{"-o", out, f + ":/a/b", f + ":/a/b"},
		{"-o", out, f + ":/a", f + ":/a/b"},
	} {
		if err := run(args); err == nil {
			t.Errorf("mkimage %q succeeded, want an error", args)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed build left %s behind (stat: %v)", out, err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(m) != 0 {
		t.Errorf("a failed build left %v behind", m)
	}
}
