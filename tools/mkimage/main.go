// Command mkimage builds a container image tarball of static binaries without
// a container engine: an empty base plus one layer holding the given files,
// loadable with `ctr -n k8s.io images import` or `docker load`.
//
//	mkimage -name localhost/mesh:dev -o bin/mesh-image.tar \
//	    -entrypoint '["/usr/local/bin/mesh","launch"]' bin/mesh bin/mesh-cni
//
// Each argument is SRC or SRC:DEST; DEST defaults to /usr/local/bin/ plus the
// base name of SRC. Files get mode 0755, owner 0:0 and a fixed time, so the
// image is reproducible.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshnet/mesh/tools/mkimage/ociimage"
)

// defaultDir is where files go without an explicit destination.
const defaultDir = "/usr/local/bin/"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "", "output tarball (required)")
	ref := fs.String("name", "localhost/mesh:dev", "image name and tag")
	entry := fs.String("entrypoint", "", `entrypoint as a JSON array, e.g. '["/usr/local/bin/mesh","launch"]'`)
	arch := fs.String("arch", "", "architecture of the config (default: this machine's)")
	var env, links, dirs multi
	fs.Var(&env, "env", "KEY=VALUE for the config (repeatable; replaces the default PATH)")
	fs.Var(&links, "symlink", "DEST=TARGET: add a symbolic link (repeatable)")
	fs.Var(&dirs, "dir", "add an empty directory (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mkimage -o FILE [-name NAME:TAG] [-entrypoint JSON] SRC[:DEST]...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("-o is required")
	}
	spec := ociimage.Spec{Architecture: *arch, Env: env}
	if *entry != "" {
		if err := json.Unmarshal([]byte(*entry), &spec.Entrypoint); err != nil {
			return fmt.Errorf("-entrypoint must be a JSON array of strings: %w", err)
		}
	}
	for _, a := range fs.Args() {
		src, dest, ok := strings.Cut(a, ":")
		if !ok {
			dest = defaultDir + filepath.Base(src)
		}
		if src == "" || !strings.HasPrefix(dest, "/") {
			return fmt.Errorf("bad file argument %q: want SRC or SRC:/ABSOLUTE/DEST", a)
		}
		spec.Entries = append(spec.Entries, ociimage.Entry{Path: dest, Source: src})
	}
	for _, l := range links {
		dest, target, ok := strings.Cut(l, "=")
		if !ok || !strings.HasPrefix(dest, "/") || target == "" {
			return fmt.Errorf("bad -symlink %q: want /DEST=TARGET", l)
		}
		spec.Entries = append(spec.Entries, ociimage.Entry{Path: dest, Link: target})
	}
	for _, d := range dirs {
		spec.Entries = append(spec.Entries, ociimage.Entry{Path: d, Dir: true})
	}
	if len(spec.Entries) == 0 {
		return fmt.Errorf("no files given")
	}
	img, err := ociimage.Build(spec)
	if err != nil {
		return err
	}
	if err := ociimage.WriteFile(*out, *ref, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s: %s %s\n", *out, *ref, digest)
	return nil
}
