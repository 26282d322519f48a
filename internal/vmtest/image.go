package vmtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Image describes the initramfs of a test VM: busybox as init and shell,
// the machine's own tools with their shared libraries, kernel modules from
// the kernel package, and the project's binaries.
type Image struct {
	Kernel *Kernel
	// Modules are loaded by init in dependency order (with everything they
	// need); built-in ones are left out.
	Modules []string
	// Programs are host programs (names looked up in PATH, or paths) copied
	// with the libraries ldd lists.
	Programs []string
	// Files maps a path in the VM to a file on the host (mode kept).
	Files map[string]string
	// Data maps a path in the VM to contents, mode 0644 (0755 under /e2e/bin).
	Data map[string]string
	// Script is run by init after the modules are loaded, with its output on
	// the output port; its exit status follows MarkExit. Empty means none
	// (a probe image).
	Script string
}

// OutPort is the serial device in the VM that reaches the host's out.log.
const OutPort = "/dev/ttyS1"

// initScript is PID 1. It mounts what a Linux system has, loads the
// modules, runs the script with its output on the output port, reports the
// status and powers off; every failure ends in MarkExit 125, so the host
// never waits for a VM that could not start its tests.
const initScript = `#!/bin/sh
export PATH=/usr/sbin:/usr/bin HOME=/root
out=` + OutPort + `
fail() { dmesg | tail -20 > $out; echo "` + MarkExit + ` 125 $*" > $out; sync; poweroff -f; }
mount -t proc proc /proc || fail mount /proc
mount -t sysfs sysfs /sys || fail mount /sys
mount -t devtmpfs devtmpfs /dev || fail mount /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail mount /tmp
mount -t tmpfs -o mode=0755 tmpfs /run || fail mount /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail mount cgroup2
while read -r m; do
	insmod "$m" || fail "insmod $m"
done < /e2e/modules
ip link set lo up || fail lo
hostname vm
echo "` + MarkUp + ` $(uname -r)" > $out
if [ -x /e2e/run ]; then
	/e2e/run > $out 2>&1 < /dev/null
	rc=$?
else
	rc=0
fi
echo "` + MarkExit + ` $rc" > $out
sync
poweroff -f
`

// Build writes the initramfs to path.
func (im *Image) Build(ctx context.Context, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("failed to create initramfs %q: %w", path, err)
	}
	c := NewCPIO(f)
	err = im.write(ctx, c)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("failed to write initramfs %q: %w", path, cerr)
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("failed to build initramfs: %w", err)
	}
	return nil
}

// usrMerged maps a host path to its place in the VM, whose /bin, /sbin,
// /lib and /lib64 are links into /usr as on Debian 12.
func usrMerged(p string) string {
	for _, d := range []string{"/bin/", "/sbin/", "/lib/", "/lib64/"} {
		if strings.HasPrefix(p, d) {
			return "/usr" + p
		}
	}
	return p
}

func (im *Image) write(ctx context.Context, c *CPIO) error {
	for _, d := range []string{"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/var", "/e2e"} {
		if err := c.Dir(d, 0o755); err != nil {
			return err
		}
	}
	for _, l := range [][2]string{{"/bin", "usr/bin"}, {"/sbin", "usr/sbin"}, {"/lib", "usr/lib"}, {"/lib64", "usr/lib64"}, {"/var/run", "../run"}} {
		if err := c.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	if err := c.CharDev("/dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := c.File("/init", 0o755, []byte(initScript)); err != nil {
		return err
	}
	etc := map[string]string{
		"/etc/passwd":   "root:x:0:0:root:/root:/bin/sh\n",
		"/etc/group":    "root:x:0:\n",
		"/etc/hostname": "vm\n",
		"/etc/hosts":    "127.0.0.1 localhost\n::1 localhost\n",
	}
	for p, s := range etc {
		if err := c.File(p, 0o644, []byte(s)); err != nil {
			return err
		}
	}
	// Name-to-number tables that nft and iproute2 read through libc.
	for _, p := range []string{"/etc/protocols", "/etc/services", "/etc/ethertypes"} {
		if err := addHostFile(c, p, p); err != nil && !os.IsNotExist(err) {
			return err
		}
	}

	// Programs and their libraries.
	var progs []string
	for _, p := range im.Programs {
		path, err := exec.LookPath(p)
		if err != nil {
			return fmt.Errorf("program %q for the VM: %w", p, err)
		}
		progs = append(progs, path)
	}
	libs, err := SharedLibs(ctx, progs...)
	if err != nil {
		return err
	}
	for _, p := range append(progs, libs...) {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return fmt.Errorf("failed to resolve %q: %w", p, err)
		}
		dst := usrMerged(p)
		if dst != usrMerged(real) && !c.Has(usrMerged(real)) {
			// Also under its real name, e.g. a library's versioned file.
			if err := addHostFile(c, usrMerged(real), real); err != nil {
				return err
			}
		}
		if c.Has(dst) {
			continue
		}
		if err := addHostFile(c, dst, real); err != nil {
			return err
		}
	}
	// busybox provides the shell and every other command not copied above.
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox for the VM: %w", err)
	}
	if libs, err := SharedLibs(ctx, bb); err != nil || len(libs) > 0 {
		return fmt.Errorf("busybox at %s is not statically linked (install busybox-static): %v", bb, err)
	}
	if err := addHostFile(c, "/usr/bin/busybox", bb); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || c.Has("/usr/bin/"+applet) || c.Has("/usr/sbin/"+applet) {
			continue
		}
		if err := c.Symlink("/usr/bin/"+applet, "busybox"); err != nil {
			return err
		}
	}

	// Kernel modules.
	var list strings.Builder
	if len(im.Modules) > 0 {
		mods, err := ScanModules(im.Kernel.ModulesDir())
		if err != nil {
			return err
		}
		builtin, err := builtinModules(im.Kernel.ModulesDir())
		if err != nil {
			return err
		}
		var want []string
		for _, m := range im.Modules {
			if !builtin[moduleName(m)] {
				want = append(want, m)
			}
		}
		order, err := LoadOrder(mods, want...)
		if err != nil {
			return err
		}
		for _, m := range order {
			rel, err := filepath.Rel(im.Kernel.Dir, m.Path)
			if err != nil {
				return err
			}
			dst := usrMerged("/" + rel)
			if err := addHostFile(c, dst, m.Path); err != nil {
				return err
			}
			fmt.Fprintln(&list, dst)
		}
	}
	if err := c.File("/e2e/modules", 0o644, []byte(list.String())); err != nil {
		return err
	}

	// The project's files.
	for _, dst := range sortedKeys(im.Files) {
		if err := addHostFile(c, dst, im.Files[dst]); err != nil {
			return err
		}
	}
	for _, dst := range sortedKeys(im.Data) {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(dst, "/e2e/bin/") {
			mode = 0o755
		}
		if err := c.File(dst, mode, []byte(im.Data[dst])); err != nil {
			return err
		}
	}
	if im.Script != "" {
		if err := c.File("/e2e/run", 0o755, []byte(im.Script)); err != nil {
			return err
		}
	}
	return nil
}

// addHostFile copies the host file src (following links) into the archive.
func addHostFile(c *CPIO, dst, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	return c.File(dst, fi.Mode().Perm(), data)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
