package attach

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/meshnet/mesh/internal/atomicfile"
)

// Record is one attachment as the daemon keeps it.
type Record struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// NetNS is the namespace file named at attach time, and NS its
	// identity then: the attachment lives as long as NetNS still refers to
	// that namespace.
	NetNS string `json:"netns"`
	NS    NSID   `json:"ns"`
	// Addresses are the attachment's addresses (both families in a
	// dual-stack mesh); Address is empty while the CNI ADD has not
	// finished (a record left so by a crash is rolled back by the next
	// Check). The IPv6 fields were added within storeVersion 1: an older
	// daemon ignores them, and loses nothing by that, as DEL releases
	// every family of the attachment's key.
	Addresses
	Created time.Time `json:"created"`
}

func (r Record) key() string { return r.ContainerID + "/" + r.IfName }

// storeVersion is the format of the attachments file; a daemon refuses a
// newer one instead of dropping records it does not understand.
const storeVersion = 1

type storeFile struct {
	Version     int      `json:"version"`
	Attachments []Record `json:"attachments"`
}

// loadRecords reads the attachments file; a missing file is no attachments.
func loadRecords(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read attachments file %q: %w", path, err)
	}
	var f storeFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("corrupt attachments file %q: %w", path, err)
	}
	if f.Version != storeVersion {
		return nil, fmt.Errorf("attachments file %q has version %d, this mesh reads version %d", path, f.Version, storeVersion)
	}
	return f.Attachments, nil
}

// saveRecords replaces the attachments file atomically, mode 0600.
func saveRecords(path string, recs []Record) error {
	if recs == nil {
		recs = []Record{}
	}
	b, err := json.MarshalIndent(storeFile{Version: storeVersion, Attachments: recs}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("failed to write attachments file %q: %w", path, err)
	}
	return nil
}
