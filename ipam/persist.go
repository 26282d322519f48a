package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"slices"

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
	// Journal is the generation of the journal that goes with this file
	// (journal.go): allocations made and released since it was written.
	// Format 3 only, so that a release that does not read journals
	// refuses the file rather than miss them.
	Journal uint64 `json:"journal,omitempty"`
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
// error naming the format (see docs/ipam.md, "Persistence"). 3 is 1 or 2
// with a journal beside it (Journal, SignedInfos say which): written while
// the allocator runs; Close writes 1 or 2 again and removes the journal,
// so a node stopped cleanly can go back to the previous release.
const (
	fileFormat        = 1
	fileFormatSigned  = 2
	fileFormatJournal = 3
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
	// journal is the generation of the journal whose records allocs
	// include; 0 for none.
	journal uint64
	// tornJournal: the journal's last line was torn (a crash while it was
	// appended) and dropped.
	tornJournal bool
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
	if l.journal == 0 {
		return l, true, nil
	}
	jpath := journalPath(path)
	jdata, err := readJournal(store, jpath)
	if err != nil {
		return l, false, err
	}
	l.allocs, l.tornJournal, err = replayJournal(jdata, l.journal, cfg, l.allocs)
	if err == nil && l.gw.set {
		err = gatewayFree(offsetAddr(cfg.Range, l.gw.off), l.allocs)
	}
	if err != nil {
		return l, false, fmt.Errorf("ipam: state file %s with journal %s: %w (refusing to start: moving them away loses the record of live allocations)", path, jpath, err)
	}
	return l, true, nil
}

func parseFile(data []byte, cfg Config) (loaded, error) {
	var l loaded
	var f fileState
	if err := json.Unmarshal(data, &f); err != nil {
		return l, fmt.Errorf("%w: %v", ErrCorruptState, err)
	}
	if f.Format != fileFormat && f.Format != fileFormatSigned && f.Format != fileFormatJournal {
		return l, fmt.Errorf("%w: unknown format %d (this release reads %d to %d)", ErrCorruptState, f.Format, fileFormat, fileFormatJournal)
	}
	if (f.Format == fileFormatJournal) != (f.Journal != 0) {
		return l, fmt.Errorf("%w: format %d with journal generation %d", ErrCorruptState, f.Format, f.Journal)
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
	set := newAllocSet(cfg.Range, len(f.Allocations))
	for _, a := range f.Allocations {
		if err := set.add(a); err != nil {
			return l, fmt.Errorf("%w: %v", ErrCorruptState, err)
		}
	}
	l = loaded{st: w.st, allocs: f.Allocations, paxos: f.Paxos, selfID: f.SelfID, floor: f.VersionFloor, signed: f.SignedInfos && f.Format >= fileFormatSigned, journal: f.Journal}
	if g := f.Gateway; g != nil {
		off, ok := addrOffset(cfg.Range, g.Addr)
		if !ok {
			return l, fmt.Errorf("%w: gateway %v is outside the range", ErrCorruptState, g.Addr)
		}
		if err := gatewayFree(g.Addr, f.Allocations); err != nil {
			return l, err
		}
		l.gw = gateway{set: true, off: off, echoed: g.Echoed}
	}
	return l, nil
}

// allocSet is a peer's allocations as the state file and its journal
// record them: each valid in the range, no key and no address twice. One
// rule for both, so that a journal cannot replay what the file could not
// hold.
type allocSet struct {
	rng    netip.Prefix
	byKey  map[Key]Allocation
	byAddr map[netip.Addr]Key
}

func newAllocSet(rng netip.Prefix, n int) *allocSet {
	return &allocSet{rng: rng, byKey: make(map[Key]Allocation, n), byAddr: make(map[netip.Addr]Key, n)}
}

// add records al, or says why it cannot be.
func (s *allocSet) add(al Allocation) error {
	k := Key{al.ContainerID, al.IfName}
	if _, ok := addrOffset(s.rng, al.Addr); !ok || al.ContainerID == "" {
		return fmt.Errorf("allocation %+v is invalid", al)
	}
	if _, dup := s.byKey[k]; dup {
		return fmt.Errorf("%s/%s allocated twice", k.ContainerID, k.IfName)
	}
	if other, dup := s.byAddr[al.Addr]; dup {
		return fmt.Errorf("%v allocated to %s/%s and %s/%s", al.Addr, other.ContainerID, other.IfName, k.ContainerID, k.IfName)
	}
	s.byKey[k], s.byAddr[al.Addr] = al, k
	return nil
}

// release removes al, or says why it cannot be.
func (s *allocSet) release(al Allocation) error {
	k := Key{al.ContainerID, al.IfName}
	if have, in := s.byKey[k]; !in || have.Addr != al.Addr {
		return fmt.Errorf("release of %s/%s (%v), which does not hold it", k.ContainerID, k.IfName, al.Addr)
	}
	delete(s.byKey, k)
	delete(s.byAddr, al.Addr)
	return nil
}

// list is the allocations by address, as the state file lists them.
func (s *allocSet) list() []Allocation {
	out := slices.Collect(maps.Values(s.byKey))
	slices.SortFunc(out, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return out
}

// gatewayFree refuses allocations that give the node's gateway to a pod.
func gatewayFree(gw netip.Addr, allocs []Allocation) error {
	for _, al := range allocs {
		if al.Addr == gw {
			return fmt.Errorf("%w: gateway %v is held by pod %s/%s", ErrCorruptState, gw, al.ContainerID, al.IfName)
		}
	}
	return nil
}

// encodeFileTo writes the state file's content into buf, which it resets
// first. journal is the generation of the journal that will go with it, 0
// for none.
func encodeFileTo(buf *bytes.Buffer, cfg Config, selfID string, st state, allocs []Allocation, px paxosDurable, gw gateway, floor uint64, signedWire bool, journal uint64) error {
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
	if journal != 0 {
		f.Format, f.Journal = fileFormatJournal, journal
	}
	if gw.set {
		f.Gateway = &fileGateway{Addr: offsetAddr(cfg.Range, gw.off), Echoed: gw.echoed}
	}
	// Compact: the file is written at every merge that teaches something
	// (and was at every allocation before the journal), and indenting a
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
	// write replaces path with data atomically and durably.
	write(path string, data []byte) error
	// appendFile appends data to path, which exists, durably (fsync).
	// On error, a prefix of data may have been appended.
	appendFile(path string, data []byte) error
	// remove removes path; a missing one is no error.
	remove(path string) error
}

type diskStore struct{}

func (diskStore) read(path string) ([]byte, error) { return os.ReadFile(path) }

func (diskStore) write(path string, data []byte) error {
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("ipam: saving state file: %w", err)
	}
	return nil
}

func (diskStore) appendFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (diskStore) remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
