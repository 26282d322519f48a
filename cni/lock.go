package cni

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockDirName is the directory, beside the daemon's socket (in its 0700
// run directory), holding one lock file per attachment.
const lockDirName = "cni-locks"

// lockPoll is how often a waiting ADD or DEL retries a held lock: short
// against the milliseconds an ADD takes, and bounded by the operation's
// context.
const lockPoll = 5 * time.Millisecond

// keyLock serialises ADD and DEL of one attachment (container ID and
// interface name) across plugin processes, which the runtime may start
// concurrently for the same key (a retry while the first is still running).
// Without it a losing ADD's rollback would release the address the winning
// ADD just configured: the allocation is the same for both.
type keyLock struct {
	f    *os.File
	path string
}

// lockKey takes the lock of (containerID, ifName) in dir, waiting until ctx
// ends. The file is named by a hash of the key, so any container ID fits.
//
// dir's parent is the daemon's run directory. When it does not exist, no
// daemon runs there, so no allocation can be made or released that a
// concurrent operation could undo: the lock is then a no-op (nil), and the
// operation fails at the daemon with "try again later" as before. The
// plugin never creates directories outside the daemon's.
func lockKey(ctx context.Context, dir, containerID, ifName string) (*keyLock, error) {
	if err := os.Mkdir(dir, 0o700); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("failed to create lock directory %q: %w", dir, err)
	}
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	path := filepath.Join(dir, hex.EncodeToString(sum[:16]))
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("failed to open lock file %q: %w", path, err)
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				break
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, fmt.Errorf("timed out waiting for another operation on container %q interface %q (lock %q): %w", containerID, ifName, path, ctx.Err())
			case <-time.After(lockPoll):
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("failed to lock %q: %w", path, err)
		}
		// A DEL that held the lock before us removes the file as it
		// finishes; a lock on the removed inode excludes nobody, so
		// start over on the file now at path.
		if same(f, path) {
			return &keyLock{f: f, path: path}, nil
		}
		f.Close()
	}
}

// same reports whether f is still the file at path.
func same(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// unlock releases the lock; remove also deletes the file (after a DEL, so
// the directory does not grow with every pod ever run). Removing it while
// still locked is what lets lockKey detect it.
func (l *keyLock) unlock(remove bool) {
	if l == nil {
		return
	}
	if remove {
		os.Remove(l.path)
	}
	l.f.Close() // releases the flock
}

// lockDir is where the lock files of conf's daemon live.
func (c *NetConf) lockDir() string {
	return filepath.Join(filepath.Dir(c.socket()), lockDirName)
}
