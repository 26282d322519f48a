//go:build e2ek8s

package k8se2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// cgroupMount is one cgroup hierarchy mounted on the machine.
type cgroupMount struct {
	point   string // e.g. /sys/fs/cgroup/cpu
	fstype  string // cgroup or cgroup2
	options string // super options, e.g. "cpu" or "name=systemd"
}

// cgroupMounts lists the cgroup hierarchies of the root mount namespace
// under /sys/fs/cgroup.
func cgroupMounts() ([]cgroupMount, error) {
	mounts, err := testnet.Mounts()
	if err != nil {
		return nil, err
	}
	var out []cgroupMount
	seen := map[string]bool{}
	for _, m := range mounts {
		if (m.FSType != "cgroup" && m.FSType != "cgroup2") || !strings.HasPrefix(m.Point, "/sys/fs/cgroup") || seen[m.Point] {
			continue
		}
		seen[m.Point] = true
		var opts []string
		for _, o := range strings.Split(m.SuperOptions, ",") {
			if o != "rw" && o != "ro" && o != "" {
				opts = append(opts, o)
			}
		}
		out = append(out, cgroupMount{point: m.Point, fstype: m.FSType, options: strings.Join(opts, ",")})
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup hierarchy mounted under /sys/fs/cgroup")
	}
	return out, nil
}

// cgroupV2Only reports whether the machine has the unified hierarchy alone.
func cgroupV2Only(ms []cgroupMount) bool {
	return len(ms) == 1 && ms[0].fstype == "cgroup2" && ms[0].point == "/sys/fs/cgroup"
}

// remountScript is a shell script that, in a host's mount namespace (whose
// /sys is a fresh sysfs without the cgroup mounts), mounts the machine's
// cgroup hierarchies again at the same places, so that kubelet and runc find
// them. Mounting a v1 hierarchy with the same options attaches to the same
// hierarchy, so the paths are the machine's. Run it once per host.
func remountScript(ms []cgroupMount) string {
	var b strings.Builder
	if cgroupV2Only(ms) {
		b.WriteString("mount -t cgroup2 cgroup2 /sys/fs/cgroup\n")
		return b.String()
	}
	b.WriteString("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n")
	for _, m := range ms {
		if m.point == "/sys/fs/cgroup" {
			continue
		}
		fmt.Fprintf(&b, "mkdir -p %s\n", m.point)
		if m.fstype == "cgroup2" {
			fmt.Fprintf(&b, "mount -t cgroup2 cgroup2 %s\n", m.point)
		} else {
			fmt.Fprintf(&b, "mount -t cgroup -o %s cgroup %s\n", m.options, m.point)
		}
	}
	return b.String()
}

// createCgroupRoot creates the cgroup root of a kubelet (an absolute cgroup
// path such as /meshk8s-123-host2) in every hierarchy, as kubelet requires;
// cpuset children start with empty cpus and mems, so they are copied.
func createCgroupRoot(ms []cgroupMount, root string) error {
	for _, m := range ms {
		d := filepath.Join(m.point, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("failed to create cgroup %s: %w", d, err)
		}
		if m.fstype == "cgroup" && strings.Contains(","+m.options+",", ",cpuset,") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(m.point, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0); err != nil {
					return fmt.Errorf("failed to set %s of %s: %w", f, d, err)
				}
			}
		}
	}
	return nil
}

// removeCgroupRoot kills every process left in the cgroup root (pod
// processes that outlived their kubelet and containerd), waits until the
// cgroups are empty and removes them, deepest first. Bounded by timeout.
func removeCgroupRoot(ms []cgroupMount, root string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var errs []error
	for _, m := range ms {
		top := filepath.Join(m.point, root)
		if _, err := os.Stat(top); err != nil {
			continue
		}
		for {
			pids := testnet.CgroupPIDs(top)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("processes %v still in %s after %v", pids, top, timeout))
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond)
		}
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			// A cgroup can stay busy for a moment after its last process died.
			for {
				err := os.Remove(dirs[i])
				if err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					errs = append(errs, fmt.Errorf("failed to remove cgroup %s: %w", dirs[i], err))
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	return errors.Join(errs...)
}

// removeStaleCgroupRoots removes the cgroup roots of earlier runs whose run
// directory (named like the root's prefix) no longer exists: those runs were
// killed before their cleanup. Roots of live runs are left alone.
func removeStaleCgroupRoots(ms []cgroupMount, prefix string) error {
	var errs []error
	for _, m := range ms {
		entries, _ := os.ReadDir(m.point)
		for _, e := range entries {
			name := e.Name()
			if !e.IsDir() || !strings.HasPrefix(name, prefix+"-") {
				continue
			}
			run, _, ok := strings.Cut(strings.TrimPrefix(name, prefix+"-"), "-")
			if !ok {
				continue
			}
			if _, err := os.Stat(filepath.Join(os.TempDir(), prefix+"-"+run)); err == nil {
				continue
			}
			if err := removeCgroupRoot(ms, "/"+name, 20*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
