package vmtest

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Module is one loadable kernel module of an extracted kernel package.
type Module struct {
	// Name is the module's name with '-' spelled '_', as the kernel does.
	Name string
	// Path is the .ko file.
	Path string
	// Depends are the names of the modules it needs loaded first.
	Depends []string
}

// moduleName normalizes a module's name: the kernel treats '-' and '_' alike.
func moduleName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(s), ".ko"), "-", "_")
}

// ScanModules reads every .ko under dir (lib/modules/<version> of an
// extracted kernel package). Debian's package ships no modules.dep (depmod
// makes it when the package is installed), so the dependencies come from
// each module's own .modinfo section, where modpost records them as
// "depends=a,b".
func ScanModules(dir string) (map[string]*Module, error) {
	mods := map[string]*Module{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		m := &Module{Name: moduleName(p), Path: p}
		if mods[m.Name] != nil {
			return fmt.Errorf("module %q found twice: %s and %s", m.Name, mods[m.Name].Path, p)
		}
		mods[m.Name] = m
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("failed to scan modules in %q: %w", dir, err)
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("no kernel modules in %q", dir)
	}
	return mods, nil
}

// readDepends reads the "depends=" entry of a module's .modinfo section.
func readDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("failed to open module %q: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %q has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("failed to read .modinfo of %q: %w", path, err)
	}
	return parseDepends(data), nil
}

// parseDepends finds "depends=..." among the NUL-separated key=value pairs
// of a .modinfo section.
func parseDepends(modinfo []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
	}
	return deps
}

// LoadOrder returns the modules to insmod, in order, so that each comes
// after everything it depends on: the named modules and all of their
// dependencies, each once. Dependencies are read lazily, so only the
// modules involved are opened.
func LoadOrder(mods map[string]*Module, names ...string) ([]*Module, error) {
	var (
		order []*Module
		state = map[string]int{} // 1 visiting, 2 done
		visit func(name string, chain []string) error
	)
	visit = func(name string, chain []string) error {
		name = moduleName(name)
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		m := mods[name]
		if m == nil {
			if len(chain) == 0 {
				return fmt.Errorf("module %q is not in the kernel package", name)
			}
			return fmt.Errorf("module %q, needed by %s, is not in the kernel package", name, chain[len(chain)-1])
		}
		if m.Depends == nil && m.Path != "" {
			deps, err := readDepends(m.Path)
			if err != nil {
				return err
			}
			m.Depends = append([]string{}, deps...)
		}
		state[name] = 1
		deps := slices.Clone(m.Depends)
		slices.Sort(deps) // a stable order, whatever the file says
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// builtinModules lists the modules built into the kernel (modules.builtin
// of the package), which need no insmod.
func builtinModules(dir string) (map[string]bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return nil, fmt.Errorf("failed to read the list of built-in modules: %w", err)
	}
	out := map[string]bool{}
	for _, l := range strings.Fields(string(data)) {
		out[moduleName(l)] = true
	}
	return out, nil
}
