package testnet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// staleGrace is how old a run directory without an owner file must be to be
// considered abandoned; younger ones may be in the middle of being created.
const staleGrace = time.Minute

// killTimeout bounds the wait for killed processes to disappear.
const killTimeout = 10 * time.Second

// CleanupStale removes what earlier test processes using prefix left behind
// when they died before their cleanup ran (e.g. SIGKILL or a test timeout):
// their processes, namespace files, mounts, cgroups, run directories and the
// binary directories of BuildBinary. Runs whose owning process is still alive
// are left alone, so parallel test packages using the same prefix are safe.
// New calls it; it blocks for as long as the teardown takes (bounded).
func CleanupStale(prefix string) error {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	var dirs []string
	for _, pattern := range []string{prefix + "-*", binDirPrefix + "*"} {
		m, err := filepath.Glob(filepath.Join(os.TempDir(), pattern))
		if err != nil {
			return fmt.Errorf("failed to list stale runs of %q: %w", prefix, err)
		}
		dirs = append(dirs, m...)
	}
	cgRoot := cgroup2Root()
	var errs []error
	for _, dir := range dirs {
		if !isStale(dir) {
			continue
		}
		// Test processes of other packages clean up the same leftovers at
		// the same time; one of them is enough.
		lock, err := os.Open(dir)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lock.Close()
			continue
		}
		var cg *cgroup
		if cgRoot != "" {
			if _, err := os.Stat(filepath.Join(cgRoot, filepath.Base(dir))); err == nil {
				cg = &cgroup{path: filepath.Join(cgRoot, filepath.Base(dir))}
			}
		}
		if err := teardownDir(dir, cg); err != nil {
			errs = append(errs, err)
		}
		lock.Close()
	}
	// Cgroups whose run directory is gone (a crash during teardown).
	if cgRoot != "" {
		cgs, _ := filepath.Glob(filepath.Join(cgRoot, prefix+"-*"))
		for _, p := range cgs {
			if _, err := os.Stat(filepath.Join(os.TempDir(), filepath.Base(p))); errors.Is(err, os.ErrNotExist) {
				cg := &cgroup{path: p}
				errs = append(errs, cg.kill(killTimeout, true), cg.remove())
			}
		}
	}
	return errors.Join(errs...)
}

// teardownDir kills every process in the cgroup cg and in the namespaces
// whose files are mounted under dir, unmounts everything under dir, removes
// cg and finally dir. It is the whole of a Net's cleanup, and works on a
// half-built Net as well as on the leftovers of a dead process.
func teardownDir(dir string, cg *cgroup) error {
	var errs []error
	if err := cg.kill(killTimeout, true); err != nil {
		errs = append(errs, err)
	}
	mounts, err := mountsUnder(dir)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	nsIDs := map[string]bool{}
	for _, m := range mounts {
		if m.FSType == "nsfs" {
			nsIDs[m.Root] = true // e.g. "net:[4026532177]", as readlink of /proc/PID/ns/net
		}
	}
	if err := killInNamespaces(nsIDs, killTimeout); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(dir); err != nil {
		// Removing files under a still mounted nsfs file or a bind would fail
		// or, worse, delete through it: keep dir for CleanupStale.
		return errors.Join(append(errs, err)...)
	}
	if err := cg.remove(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("failed to remove run directory %q: %w", dir, err))
	}
	return errors.Join(errs...)
}

// killInNamespaces SIGKILLs every process whose network, mount or UTS
// namespace is in ids and waits until none is left.
func killInNamespaces(ids map[string]bool, timeout time.Duration) error {
	if len(ids) == 0 {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		pids := pidsInNamespaces(ids)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still alive in test namespaces after %v", pids, timeout)
		}
		for _, pid := range pids {
			killPID(pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pidsInNamespaces lists the live processes in any of the namespaces ids.
// Zombies have no namespace links, so they are not listed.
func pidsInNamespaces(ids map[string]bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		for _, ns := range []string{"net", "mnt", "uts"} {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
			if err == nil && ids[link] {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killPID sends SIGKILL to pid, ignoring a process that is already gone.
func killPID(pid int) {
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// privateBind makes dir a bind mount of itself with private propagation:
// persistent mount namespace files may only be bind mounted on a private
// mount, and nothing mounted under dir must propagate to other namespaces.
func privateBind(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("failed to bind mount %q on itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return errors.Join(fmt.Errorf("failed to make mount %q private: %w", dir, err),
			unix.Unmount(dir, unix.MNT_DETACH))
	}
	return nil
}

// unmountUnder unmounts dir and every mount below it, deepest first, until
// none is left (mounts can be stacked on one mount point).
func unmountUnder(dir string) error {
	for range 10 {
		mounts, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return nil
		}
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Point) > len(mounts[j].Point) })
		for _, m := range mounts {
			if err := unix.Unmount(m.Point, 0); err != nil {
				// Busy (e.g. a process of another run still has a file
				// open there): detach it now, the kernel frees it later.
				_ = unix.Unmount(m.Point, unix.MNT_DETACH)
			}
		}
	}
	mounts, err := mountsUnder(dir)
	if err == nil && len(mounts) > 0 {
		err = fmt.Errorf("failed to unmount %q: %d mounts left", dir, len(mounts))
	}
	return err
}

// mountsUnder lists the mounts of this process's mount namespace at or below
// dir.
func mountsUnder(dir string) ([]Mount, error) {
	all, err := Mounts()
	if err != nil {
		return nil, err
	}
	var res []Mount
	for _, m := range all {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			res = append(res, m)
		}
	}
	return res, nil
}

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Root, Point, FSType string
	// SuperOptions are the filesystem's options (after the " - "), e.g.
	// "rw,cpu" for a cgroup v1 hierarchy.
	SuperOptions string
}

// Mounts parses /proc/self/mountinfo: the mounts of this process's mount
// namespace, escapes undone.
func Mounts() ([]Mount, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("failed to read mountinfo: %w", err)
	}
	var res []Mount
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 1 {
			continue
		}
		m := Mount{Root: unescapeOctal(a[3]), Point: unescapeOctal(a[4]), FSType: b[0]}
		if len(b) >= 3 {
			m.SuperOptions = b[2]
		}
		res = append(res, m)
	}
	return res, nil
}

// unescapeOctal undoes mountinfo's \NNN escaping of blanks and backslashes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Owner files record which process a run directory belongs to: its PID and
// start time, since PIDs are reused.

const ownerFile = "owner"

func writeOwner(dir string) error {
	st, err := procStart(os.Getpid())
	if err != nil {
		return err
	}
	data := fmt.Sprintf("%d %s\n", os.Getpid(), st)
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(data), 0o644); err != nil {
		return fmt.Errorf("failed to write owner of %q: %w", dir, err)
	}
	return nil
}

// isStale reports whether the run directory dir belongs to a process that no
// longer exists.
func isStale(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		fi, err := os.Stat(dir)
		return err == nil && time.Since(fi.ModTime()) > staleGrace
	}
	var pid int
	var start string
	if _, err := fmt.Sscan(string(data), &pid, &start); err != nil {
		return true
	}
	cur, err := procStart(pid)
	return err != nil || cur != start
}

// procStart is the start time of pid in clock ticks since boot (field 22 of
// /proc/PID/stat).
func procStart(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", fmt.Errorf("failed to read stat of process %d: %w", pid, err)
	}
	// The command name (field 2) may contain blanks; it ends at the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", fmt.Errorf("malformed stat of process %d", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return "", fmt.Errorf("malformed stat of process %d", pid)
	}
	return fields[19], nil // field 22 overall; fields[0] is field 3
}
