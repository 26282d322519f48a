// Package attach gives processes that no CNI runtime manages (a netns made
// with `ip netns add`, a Docker, Podman or containerd container, any
// process) an address on the mesh, through the same CNI plugin and network
// config a runtime uses: `mesh attach` and `mesh detach`. The daemon owns
// the Manager: it records every attachment in its state dir and releases
// the ones whose network namespace is gone (see Manager.Check), so an
// attached container that exits without a detach loses its address
// without anyone guessing.
package attach

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// NetnsDir is where `ip netns add NAME` makes NAME's namespace file.
const NetnsDir = "/run/netns"

// TargetPath turns what a user names (a PID, a netns name, or a path of a
// network namespace file) into the absolute path of the namespace file. It
// looks at the string only: a PID becomes /proc/PID/ns/net, a bare name
// NetnsDir/NAME, anything with a slash a cleaned absolute path.
func TargetPath(target string) (string, error) {
	switch {
	case target == "":
		return "", errors.New("empty attach target: want a PID, a netns name or a netns path")
	case strings.ContainsRune(target, '/'):
		p, err := filepath.Abs(target)
		if err != nil {
			return "", fmt.Errorf("failed to resolve attach target %q: %w", target, err)
		}
		return p, nil
	}
	if pid, err := strconv.Atoi(target); err == nil {
		if pid <= 0 {
			return "", fmt.Errorf("invalid PID %d", pid)
		}
		return fmt.Sprintf("/proc/%d/ns/net", pid), nil
	}
	if target == "." || target == ".." {
		return "", fmt.Errorf("invalid netns name %q", target)
	}
	return filepath.Join(NetnsDir, target), nil
}

// NSID identifies a network namespace while it exists: the device and
// inode of its nsfs file. A namespace file of a live namespace keeps them;
// a new namespace at the same path gets others.
type NSID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// ContainerID is the CNI container ID of the attachments of namespace id:
// derived, so attaching the same namespace twice (by path, name or PID)
// is the same attachment, and the IPAM hands back the same address.
func (id NSID) ContainerID() string { return fmt.Sprintf("mesh-attach-%x-%x", id.Dev, id.Ino) }

// ErrNotNetNS is wrapped when a path exists but is not a network
// namespace (a plain file, an unmounted namespace's leftover file).
var ErrNotNetNS = errors.New("not a network namespace")

// StatNS returns the identity of the network namespace at path. A missing
// path wraps os.ErrNotExist (for /proc/PID/ns/net: the process is gone).
func StatNS(path string) (NSID, error) {
	f, err := os.Open(path)
	if err != nil {
		return NSID{}, fmt.Errorf("failed to open netns %q: %w", path, err)
	}
	defer f.Close()
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return NSID{}, fmt.Errorf("failed to stat netns %q: %w", path, err)
	}
	// nsfs, or procfs for /proc/PID/ns/net on old kernels.
	if fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		return NSID{}, fmt.Errorf("%q: %w", path, ErrNotNetNS)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return NSID{}, fmt.Errorf("failed to stat netns %q: %w", path, err)
	}
	// A namespace file of another kind (/proc/PID/ns/mnt) is nsfs too;
	// only a network namespace answers this ioctl with CLONE_NEWNET.
	if t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err == nil && t != unix.CLONE_NEWNET {
		return NSID{}, fmt.Errorf("%q: %w", path, ErrNotNetNS)
	}
	return NSID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}
