package testnet

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cgroup is a cgroup v2 directory. Every process of a host is started in the
// host's cgroup, so that cleanup also finds the processes that left the
// host's namespaces (e.g. started with `ip netns exec` in a pod namespace) or
// daemonised themselves. A nil *cgroup is valid and does nothing: without a
// writable cgroup v2 hierarchy, cleanup falls back to finding processes by
// namespace only.
type cgroup struct {
	path string
}

// cgroup2Root is the mount point of the cgroup v2 hierarchy, or "".
func cgroup2Root() string {
	mounts, err := Mounts()
	if err != nil {
		return ""
	}
	for _, m := range mounts {
		if m.FSType == "cgroup2" {
			return m.Point
		}
	}
	return ""
}

// NoCgroupEnv, set to a non-empty value, stops New from using cgroups (for
// machines where creating them misbehaves); cleanup then finds processes by
// namespace only.
const NoCgroupEnv = "TESTNET_NO_CGROUP"

// newCgroup creates a cgroup named name under the root of the cgroup v2
// hierarchy, or returns nil when that is not possible (no cgroup v2, or
// read-only as in many containers) or disabled by NoCgroupEnv.
func newCgroup(name string) *cgroup {
	if os.Getenv(NoCgroupEnv) != "" {
		return nil
	}
	root := cgroup2Root()
	if root == "" {
		return nil
	}
	p := filepath.Join(root, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return nil
	}
	return &cgroup{path: p}
}

// child creates a sub-cgroup.
func (c *cgroup) child(name string) (*cgroup, error) {
	if c == nil {
		return nil, nil
	}
	p := filepath.Join(c.path, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return nil, fmt.Errorf("failed to create cgroup %q: %w", p, err)
	}
	return &cgroup{path: p}, nil
}

// open returns a directory handle usable as SysProcAttr.CgroupFD.
func (c *cgroup) open() (*os.File, error) {
	f, err := os.Open(c.path)
	if err != nil {
		return nil, fmt.Errorf("failed to open cgroup %q: %w", c.path, err)
	}
	return f, nil
}

// kill SIGKILLs every process in c and its descendants and waits (bounded)
// until they are gone. Unless final, c is used again afterwards, and then
// cgroup.kill must be avoided: on some kernels (seen on 6.18) every process
// later cloned into a cgroup that was killed that way is killed at birth.
func (c *cgroup) kill(timeout time.Duration, final bool) error {
	if c == nil {
		return nil
	}
	if _, err := os.Stat(c.path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	killFile := filepath.Join(c.path, "cgroup.kill")
	hasKill := final
	if _, err := os.Stat(killFile); err != nil {
		hasKill = false // kernels before 5.14
	}
	deadline := time.Now().Add(timeout)
	for {
		populated, err := c.populated()
		if err != nil {
			return err
		}
		if !populated {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of cgroup %q still alive after %v", c.path, timeout)
		}
		if hasKill {
			if err := os.WriteFile(killFile, []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("failed to kill cgroup %q: %w", c.path, err)
			}
		} else {
			c.killProcs()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killProcs kills the processes listed in c and its descendants one by one.
func (c *cgroup) killProcs() {
	for _, pid := range CgroupPIDs(c.path) {
		killPID(pid)
	}
}

// CgroupPIDs lists the processes in the cgroup v2 directory dir and its
// descendants (their cgroup.procs files); unreadable parts are skipped.
func CgroupPIDs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// populated reports whether c or a descendant has a live process.
func (c *cgroup) populated() (bool, error) {
	f, err := os.Open(filepath.Join(c.path, "cgroup.events"))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // removed meanwhile, e.g. by a concurrent CleanupStale
	}
	if err != nil {
		return false, fmt.Errorf("failed to read events of cgroup %q: %w", c.path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == "populated" {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("no populated field in events of cgroup %q", c.path)
}

// remove deletes c and its descendants, deepest first; they must be empty.
func (c *cgroup) remove() error {
	if c == nil {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(c.path, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("failed to list cgroup %q: %w", c.path, err)
	}
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("failed to remove cgroup %q: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}
