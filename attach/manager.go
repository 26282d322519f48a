package attach

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MaxAttachments bounds the records a daemon keeps; an attach beyond it is
// refused (the IPAM would run out of the node's ranges long before).
const MaxAttachments = 4096

// rollbackTimeout bounds the CNI DEL that undoes a failed or abandoned
// ADD; it runs even when the caller has given up.
const rollbackTimeout = 30 * time.Second

// Manager keeps the attachments of one node: it runs the CNI operations
// and records each attachment in a file (mode 0600) before its ADD, so a
// crash in the middle leaves a record the next Check rolls back. Its
// methods are safe for concurrent use; CNI operations run one at a time.
type Manager struct {
	file   string
	plugin Plugin
	log    *slog.Logger
	// hostNS is the daemon's own network namespace, which is never
	// attached: wiring it would give the host a second default route.
	hostNS NSID

	mu     sync.Mutex
	recs   map[string]Record // by key(); at most MaxAttachments
	failed map[string]string // last failed release per key, so it is logged once
}

// NewManager loads the attachments recorded in file (mode 0600).
func NewManager(file string, plugin Plugin, log *slog.Logger) (*Manager, error) {
	recs, err := loadRecords(file)
	if err != nil {
		return nil, err
	}
	host, err := StatNS("/proc/self/ns/net")
	if err != nil {
		return nil, err
	}
	m := &Manager{file: file, plugin: plugin, log: log, hostNS: host, recs: map[string]Record{}, failed: map[string]string{}}
	for _, r := range recs {
		m.recs[r.key()] = r
	}
	return m, nil
}

// DefaultIfName is the interface an attach makes unless told otherwise,
// the name containers expect for their network.
const DefaultIfName = "eth0"

// ErrInvalid is wrapped by errors in what the caller asked for (as opposed
// to failures of the node).
var ErrInvalid = errors.New("invalid attach request")

// ValidIfName checks an interface name as the kernel and CNI want it.
func ValidIfName(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("%w: interface name %q must be 1 to 15 characters without '/', ':' or spaces", ErrInvalid, name)
	}
	return nil
}

// Attach gives the namespace at netns an interface ifName with a mesh
// address, or returns the existing attachment of that namespace and
// interface unchanged.
func (m *Manager) Attach(ctx context.Context, netns, ifName string) (Record, error) {
	if err := ValidIfName(ifName); err != nil {
		return Record{}, err
	}
	id, err := StatNS(netns)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if id == m.hostNS {
		return Record{}, fmt.Errorf("%w: %q is the host's own network namespace", ErrInvalid, netns)
	}
	r := Record{ContainerID: id.ContainerID(), IfName: ifName, NetNS: netns, NS: id, Created: time.Now().UTC()}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.recs[r.key()]; ok && old.Address != "" {
		return old, nil
	}
	if len(m.recs) >= MaxAttachments {
		return Record{}, fmt.Errorf("refusing to attach %q: this node already has %d attachments", netns, len(m.recs))
	}
	m.recs[r.key()] = r
	if err := m.saveLocked(); err != nil {
		delete(m.recs, r.key())
		return Record{}, err
	}
	addrs, err := m.plugin.Add(ctx, r.ContainerID, ifName, netns)
	if err != nil {
		// mesh-cni undoes its own part of a failed ADD; a DEL of the whole
		// list also undoes what chained plugins did.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if derr := m.plugin.Del(rctx, r.ContainerID, ifName, netns); derr != nil {
			// The record stays (pending) and the next Check retries.
			return Record{}, errors.Join(err, fmt.Errorf("rollback failed, retried by the daemon: %w", derr))
		}
		delete(m.recs, r.key())
		if serr := m.saveLocked(); serr != nil {
			return Record{}, errors.Join(err, serr)
		}
		return Record{}, err
	}
	r.Addresses = addrs
	m.recs[r.key()] = r
	if err := m.saveLocked(); err != nil {
		// The pending record on disk still names this attachment, so
		// nothing is lost: the next Check after a restart rolls it back.
		return Record{}, err
	}
	m.log.Info("attached", "netns", netns, "ifName", ifName, "address", addrs.Address, "address6", addrs.Address6, "containerID", r.ContainerID)
	return r, nil
}

// Detach removes the attachments of the namespace at netns (every
// interface when ifName is empty). Detaching what is not attached is not
// an error: it returns no records. A netns path that no longer exists
// still matches the attachments made through it.
func (m *Manager) Detach(ctx context.Context, netns, ifName string) ([]Record, error) {
	id, statErr := StatNS(netns)
	m.mu.Lock()
	defer m.mu.Unlock()
	var match []Record
	for _, r := range m.recs {
		if ifName != "" && r.IfName != ifName {
			continue
		}
		if (statErr == nil && r.NS == id) || r.NetNS == netns {
			match = append(match, r)
		}
	}
	sortRecords(match)
	var done []Record
	for _, r := range match {
		ns := ""
		if statErr == nil && r.NS == id {
			ns = netns
		}
		if err := m.plugin.Del(ctx, r.ContainerID, r.IfName, ns); err != nil {
			if serr := m.saveLocked(); serr != nil {
				err = errors.Join(err, serr)
			}
			return done, err
		}
		delete(m.recs, r.key())
		delete(m.failed, r.key())
		done = append(done, r)
		m.log.Info("detached", "netns", r.NetNS, "ifName", r.IfName, "address", r.Address, "address6", r.Address6, "containerID", r.ContainerID)
	}
	if len(done) == 0 {
		return nil, nil
	}
	return done, m.saveLocked()
}

// List returns the attachments sorted by namespace path and interface.
func (m *Manager) List() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Record, 0, len(m.recs))
	for _, r := range m.recs {
		out = append(out, r)
	}
	sortRecords(out)
	return out
}

// gone tells from the namespace path's current state whether the recorded
// namespace no longer exists there. Only a definite answer counts: the
// path is missing (for /proc/PID/ns/net: the process exited), is no
// namespace, or refers to another namespace. Any other error (out of file
// descriptors, permissions) keeps the attachment.
func gone(r Record) (bool, error) {
	id, err := StatNS(r.NetNS)
	switch {
	case err == nil:
		return id != r.NS, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ESRCH), errors.Is(err, ErrNotNetNS):
		return true, nil
	default:
		return false, err
	}
}

// Check releases (CNI DEL, which frees the address) every attachment
// whose namespace is gone, and rolls back every pending record left by a
// crash in the middle of an attach. It returns what it released. A
// failed release is logged once and retried by the next Check.
func (m *Manager) Check(ctx context.Context) []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	var released []Record
	keys := make([]string, 0, len(m.recs))
	for k := range m.recs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r := m.recs[k]
		isGone, err := gone(r)
		if err != nil {
			m.logFailure(r, "cannot tell whether the namespace of an attachment still exists; keeping it", err)
			continue
		}
		if !isGone && r.Address != "" {
			continue
		}
		ns := r.NetNS
		if isGone {
			ns = ""
		}
		if err := m.plugin.Del(ctx, r.ContainerID, r.IfName, ns); err != nil {
			m.logFailure(r, "failed to release an attachment (retrying)", err)
			continue
		}
		delete(m.recs, k)
		delete(m.failed, k)
		released = append(released, r)
		reason := "its network namespace is gone"
		if !isGone {
			reason = "its attach did not finish"
		}
		m.log.Info("released attachment", "reason", reason, "netns", r.NetNS, "ifName", r.IfName, "address", r.Address, "address6", r.Address6, "containerID", r.ContainerID)
	}
	if len(released) > 0 {
		if err := m.saveLocked(); err != nil {
			m.log.Error("failed to record released attachments", "error", err)
		}
	}
	return released
}

func (m *Manager) logFailure(r Record, msg string, err error) {
	if m.failed[r.key()] == err.Error() {
		return
	}
	m.failed[r.key()] = err.Error()
	m.log.Warn(msg, "netns", r.NetNS, "ifName", r.IfName, "containerID", r.ContainerID, "error", err)
}

func (m *Manager) saveLocked() error {
	recs := make([]Record, 0, len(m.recs))
	for _, r := range m.recs {
		recs = append(recs, r)
	}
	sortRecords(recs)
	return saveRecords(m.file, recs)
}

func sortRecords(rs []Record) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].NetNS != rs[j].NetNS {
			return rs[i].NetNS < rs[j].NetNS
		}
		return rs[i].IfName < rs[j].IfName
	})
}
