package vmtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// CPIO writes an initramfs in the "newc" format the kernel unpacks (see the
// kernel's Documentation/driver-api/early-userspace/buffer-format.rst):
// per entry a 110-byte ASCII header, the NUL-terminated name and the data,
// each padded to 4 bytes, and a final entry named "TRAILER!!!". Writing it
// here avoids a dependency on the cpio tool for a format this small.
//
// Directories are created implicitly for every entry's parents, once; an
// entry added twice is an error rather than a silent overwrite, as the
// kernel would keep the later one and hide a mistake in the image.
type CPIO struct {
	w     *bufio.Writer
	ino   uint32
	seen  map[string]bool
	err   error
	ended bool
}

// NewCPIO returns a writer of an archive to w. Call Close to write the
// trailer and flush.
func NewCPIO(w io.Writer) *CPIO {
	return &CPIO{w: bufio.NewWriterSize(w, 1<<20), ino: 1, seen: map[string]bool{}}
}

// clean turns an absolute or relative path into the archive's relative form.
func clean(name string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+name), "/")
	if c == "" || c == "." || strings.Contains(name, "\x00") {
		return "", fmt.Errorf("invalid archive path %q", name)
	}
	return c, nil
}

// Dir adds a directory (and its parents).
func (c *CPIO) Dir(name string, perm fs.FileMode) error {
	n, err := clean(name)
	if err != nil {
		return err
	}
	if err := c.parents(n); err != nil {
		return err
	}
	if c.seen[n] {
		return nil // directories may be named more than once
	}
	c.seen[n] = true
	return c.entry(n, 0o040000|uint32(perm.Perm()), 0, 0, nil)
}

// File adds a regular file with the given contents.
func (c *CPIO) File(name string, perm fs.FileMode, data []byte) error {
	n, err := c.fresh(name)
	if err != nil {
		return err
	}
	return c.entry(n, 0o100000|uint32(perm.Perm()), 0, 0, data)
}

// Symlink adds a symbolic link name pointing to target.
func (c *CPIO) Symlink(name, target string) error {
	n, err := c.fresh(name)
	if err != nil {
		return err
	}
	if target == "" {
		return fmt.Errorf("symlink %q with an empty target", name)
	}
	return c.entry(n, 0o120777, 0, 0, []byte(target))
}

// CharDev adds a character device node, e.g. /dev/console (5, 1), which the
// kernel opens for init before any devtmpfs is mounted.
func (c *CPIO) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	n, err := c.fresh(name)
	if err != nil {
		return err
	}
	return c.entry(n, 0o020000|uint32(perm.Perm()), major, minor, nil)
}

// Has reports whether name was added (as any kind of entry).
func (c *CPIO) Has(name string) bool {
	n, err := clean(name)
	return err == nil && c.seen[n]
}

// Close writes the trailer and flushes. It does not close the underlying
// writer.
func (c *CPIO) Close() error {
	if c.ended {
		return c.err
	}
	c.ended = true
	if err := c.entry("TRAILER!!!", 0, 0, 0, nil); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		c.err = fmt.Errorf("failed to write archive: %w", err)
	}
	return c.err
}

// fresh checks that name is new and creates its parents.
func (c *CPIO) fresh(name string) (string, error) {
	n, err := clean(name)
	if err != nil {
		return "", err
	}
	if c.seen[n] {
		return "", fmt.Errorf("archive entry %q added twice", n)
	}
	if err := c.parents(n); err != nil {
		return "", err
	}
	c.seen[n] = true
	return n, nil
}

func (c *CPIO) parents(n string) error {
	var missing []string
	for d := path.Dir(n); d != "." && !c.seen[d]; d = path.Dir(d) {
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		c.seen[missing[i]] = true
		if err := c.entry(missing[i], 0o040755, 0, 0, nil); err != nil {
			return err
		}
	}
	return nil
}

var zeros [4]byte

func (c *CPIO) entry(name string, mode, rmajor, rminor uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	if c.ended && name != "TRAILER!!!" {
		return errors.New("archive already closed")
	}
	ino := c.ino
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check. mtime is 0 so the
	// same inputs give the same image.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
	return c.err
}

func (c *CPIO) write(b []byte) {
	if c.err != nil {
		return
	}
	if _, err := c.w.Write(b); err != nil {
		c.err = fmt.Errorf("failed to write archive: %w", err)
	}
}

func (c *CPIO) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(zeros[:4-r])
	}
}
