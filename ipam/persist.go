package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"

	"github.com/meshnet/mesh/internal/atomicfile"
)

// fileState is the state file. JSON so an operator can read it (compact,
// one line: jq shows it indented); the ring is the same binary form as on
// the wire, base64 in the JSON.
type fileState struct {
	Format      int          `json:"format"`
	Range       string       `json:"range"`
	Self        string       `json:"self"`
	SelfID      string       `json:"selfID"`
	State       []byte       `json:"state"`
	Allocations []Allocation `json:"allocations"`
	Paxos       paxosDurable `json:"paxos"`
	// Gateway is the node's overlay address, chosen once (docs/ipam.md,
	// "Overlay address"). Absent in files of earlier releases: the
	// gateway is then chosen on load, as those releases computed it.
	// Older readers ignore the field, so the format stays 1.
	Gateway *fileGateway `json:"gateway,omitempty"`
	// VersionFloor is above every version of this peer's info published
	// before the file was written: a restart continues above it even if
	// the clock went back (lease echoes compare versions). Absent in
	// files of earlier releases.
	VersionFloor uint64 `json:"versionFloor,omitempty"`
	// SignedInfos: this peer sends its states with signatures (every
	// member reads them), so a restart goes on doing so. Format 2 only.
	SignedInfos bool `json:"signedInfos,omitempty"`
}

type fileGateway struct {
	Addr netip.Addr `json:"addr"`
	// Echoed: a lease quorum has echoed it as held (automatic reclaim), so it
	// is used at once after a restart.
	Echoed bool `json:"echoed,omitempty"`
}

// File formats. 1 is the previous release's: State without signatures
// (MIP2, MIP6). 2 holds State with the peer infos' signatures (MIP3,
// MIP7), so that a restarted peer still forwards others' signed infos and
// refuses their unsigned ones; it is written as soon as any info is
// signed. This release reads both; the previous release refuses 2 with an
// error naming the format (see docs/ipam.md, "Persistence").
const (
	fileFormat       = 1
	fileFormatSigned = 2
)

// loaded is what a state file gives back.
type loaded struct {
	st     state
	allocs []Allocation
	paxos  paxosDurable
	selfID string
	gw     gateway
	floor  uint64
	signed bool // SignedInfos
}

// loadFile reads path. A missing file is a fresh start (ok false); any other
// problem is an error naming the file, because starting without the
// allocations it holds could hand a live pod's address to another pod.
func loadFile(store stateStore, path string, cfg Config) (l loaded, ok bool, err error) {
	data, err := store.read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return l, false, nil
	}
	if err != nil {
		return l, false, fmt.Errorf("ipam: reading state file %s: %w", path, err)
	}
	l, err = parseFile(data, cfg)
	if err != nil {
		return l, false, fmt.Errorf("ipam: state file %s: %w (refusing to start: moving it away loses the record of live allocations)", path, err)
	}
	return l, true, nil
}

func parseFile(data []byte, cfg Config) (loaded, error) {
	var l loaded
	var f fileState
	if err := json.Unmarshal(data, &f); err != nil {
		return l, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	if f.Format != fileFormat && f.Format != fileFormatSigned {
		return l, fmt.Errorf("%w: unknown format %d (this release reads %d and %d)", ErrCorruptState, f.Format, fileFormat, fileFormatSigned)
	}
	if f.Range != cfg.Range.String() {
		return l, fmt.Errorf("%w: written for cluster range %s, configured range is %s", ErrRangeMismatch, f.Range, cfg.Range)
	}
	if f.Self != cfg.Self {
		return l, fmt.Errorf("written by peer %q, this peer is %q", f.Self, cfg.Self)
	}
	w, err := decodeState(f.State)
	if err != nil {
		return l, fmt.Errorf("%w: ring: %v", ErrCorruptState, err)
	}
	if w.prefix != cfg.Range {
		return l, fmt.Errorf("%w: ring is for %s", ErrRangeMismatch, w.prefix)
	}
	seen := map[Key]bool{}
	used := map[netip.Addr]bool{}
	for _, a := range f.Allocations {
		k := Key{a.ContainerID, a.IfName}
		if _, ok := addrOffset(cfg.Range, a.Addr); !ok || a.ContainerID == "" {
			return l, fmt.Errorf("%w: allocation %+v is invalid", ErrCorruptState, a)
		}
		if seen[k] || used[a.Addr] {
			return l, fmt.Errorf("%w: allocation %+v is duplicated", ErrCorruptState, a)
		}
		seen[k], used[a.Addr] = true, true
	}
	l = loaded{st: w.st, allocs: f.Allocations, paxos: f.Paxos, selfID: f.SelfID, floor: f.VersionFloor, signed: f.SignedInfos && f.Format == fileFormatSigned}
	if g := f.Gateway; g != nil {
		off, ok := addrOffset(cfg.Range, g.Addr)
		if !ok || used[g.Addr] {
			return l, fmt.Errorf("%w: gateway %v is outside the range or held by a pod", ErrCorruptState, g.Addr)
		}
		l.gw = gateway{set: true, off: off, echoed: g.Echoed}
	}
	return l, nil
}

// encodeFileTo writes the state file's content into buf, which it resets
// first.
func encodeFileTo(buf *bytes.Buffer, cfg Config, selfID string, st state, allocs []Allocation, px paxosDurable, gw gateway, floor uint64, signedWire bool) error {
	signed := signedWire || hasSignatures(st)
	f := fileState{
		VersionFloor: floor,
		Format:       fileFormat,
		Range:        cfg.Range.String(),
		Self:         cfg.Self,
		SelfID:       selfID,
		State:        encodeStateAs(cfg.Range, cfg.Self, st, signed),
		Allocations:  allocs,
		Paxos:        px,
	}
	if signed {
		f.Format, f.SignedInfos = fileFormatSigned, signedWire
	}
	if gw.set {
		f.Gateway = &fileGateway{Addr: offsetAddr(cfg.Range, gw.off), Echoed: gw.echoed}
	}
	// Compact: the file is written at every allocation, and indenting a
	// large state cost a third of the encoding (read it with jq).
	buf.Reset()
	return json.NewEncoder(buf).Encode(f)
}

// hasSignatures says whether any info of st is signed.
func hasSignatures(st state) bool {
	for _, p := range st.peers {
		if len(p.Sig) > 0 {
			return true
		}
	}
	return false
}

// stateStore is where state files live: the disk, or memory in simulations
// (fsync per step would make a 100-peer simulation crawl).
type stateStore interface {
	read(path string) ([]byte, error)
	write(path string, data []byte) error
}

type diskStore struct{}

func (diskStore) read(path string) ([]byte, error) { return os.ReadFile(path) }

func (diskStore) write(path string, data []byte) error {
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("ipam: saving state file: %w", err)
	}
	return nil
}
