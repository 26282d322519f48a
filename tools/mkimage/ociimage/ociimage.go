// Package ociimage builds single-layer container images from files on disk,
// without a container engine or a registry, and writes them as tarballs that
// `ctr images import` (and `docker load`) accept.
//
// Images are reproducible: every entry of the layer has owner 0:0 and the
// modification time of the Unix epoch, and the config has no creation time,
// so the same inputs always give the same image digest.
package ociimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultFileMode is the mode of files added without an explicit one: the
// images hold static binaries.
const DefaultFileMode = 0o755

// Entry is one path of the image's root filesystem.
type Entry struct {
	// Path is the absolute path inside the image, e.g. /usr/local/bin/mesh.
	Path string
	// Source is the file on disk whose content is copied; used when Link is
	// empty and Dir is false.
	Source string
	// Link makes the entry a symbolic link to this target.
	Link string
	// Dir makes the entry an (empty) directory.
	Dir bool
	// Mode is the permission bits; 0 means DefaultFileMode for files and
	// 0755 for directories (1777 for /tmp).
	Mode os.FileMode
}

// Spec describes an image.
type Spec struct {
	Entries    []Entry
	Entrypoint []string
	Cmd        []string
	Env        []string // default: a PATH covering /usr/local/bin, /usr/bin and /bin
	WorkingDir string   // default "/"
	// Architecture and OS of the config; default runtime.GOARCH and linux.
	Architecture string
	OS           string
}

var epoch = time.Unix(0, 0).UTC()

// Layer returns the uncompressed tar of spec's entries. Parent directories
// of every entry are added (mode 0755) when not listed; entries are sorted by
// path so that parents come first and the result is reproducible.
func Layer(entries []Entry) ([]byte, error) {
	all := map[string]Entry{}
	for _, e := range entries {
		p := path.Clean("/" + e.Path)
		if p == "/" {
			return nil, errors.New("an image entry cannot be the root directory")
		}
		if !strings.HasPrefix(e.Path, "/") {
			return nil, fmt.Errorf("image path %q is not absolute", e.Path)
		}
		if _, dup := all[p]; dup {
			return nil, fmt.Errorf("image path %q given twice", p)
		}
		e.Path = p
		all[p] = e
	}
	for p := range all {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := all[d]; ok {
				if !e.Dir {
					return nil, fmt.Errorf("image path %q is inside %q, which is not a directory", p, d)
				}
				continue
			}
			all[d] = Entry{Path: d, Dir: true}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := all[p]
		hdr := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			ModTime: epoch,
			Uname:   "root",
			Gname:   "root",
			Format:  tar.FormatPAX,
		}
		var content []byte
		switch {
		case e.Dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
			hdr.Mode = 0o755
			if p == "/tmp" {
				hdr.Mode = 0o1777
			}
		case e.Link != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.Link
			hdr.Mode = 0o777
		default:
			data, err := os.ReadFile(e.Source)
			if err != nil {
				return nil, fmt.Errorf("failed to read %q for image path %q: %w", e.Source, p, err)
			}
			content = data
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(data))
			hdr.Mode = DefaultFileMode
		}
		if e.Mode != 0 {
			hdr.Mode = int64(e.Mode.Perm())
			if e.Mode&os.ModeSticky != 0 {
				hdr.Mode |= 0o1000
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("failed to write tar header of %q: %w", p, err)
		}
		if _, err := tw.Write(content); err != nil {
			return nil, fmt.Errorf("failed to write %q to the layer: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("failed to finish the layer: %w", err)
	}
	return buf.Bytes(), nil
}

// Build returns the image described by spec: an empty base plus one layer.
func Build(spec Spec) (v1.Image, error) {
	layerTar, err := Layer(spec.Entries)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("failed to make the layer: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return nil, fmt.Errorf("failed to add the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("failed to read the image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = spec.OS
	if cf.OS == "" {
		cf.OS = "linux"
	}
	cf.Architecture = spec.Architecture
	if cf.Architecture == "" {
		cf.Architecture = runtime.GOARCH
	}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.Cmd = spec.Cmd
	cf.Config.Env = spec.Env
	if cf.Config.Env == nil {
		cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	cf.Config.WorkingDir = spec.WorkingDir
	if cf.Config.WorkingDir == "" {
		cf.Config.WorkingDir = "/"
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("failed to set the image config: %w", err)
	}
	return img, nil
}

// WriteFile writes img to file as a tarball tagged ref (e.g.
// "localhost/mesh:dev": a full name, which runtimes keep as it is). The file is
// written to a temporary name and renamed, so a failed build never leaves a
// truncated tarball behind.
func WriteFile(file, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("invalid image name %q: %w", ref, err)
	}
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failed to write image %q to %q: %w", ref, file, err)
	}
	if err := os.Rename(tmp, file); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("failed to write image %q: %w", file, err)
	}
	return nil
}
