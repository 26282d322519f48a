package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
)

// The journal is the state file's append-only companion. A pod's ADD or
// DEL changes one allocation (and this peer's own info, which a restart
// publishes again from the allocations), yet rewriting the state file
// costs the whole cluster's state: about 105 bytes a peer, so 0.5 MB at
// 5000 peers, encoded, written and fsynced twice per pod. So an
// allocation or a release that is the only change since the state file
// was written appends one record here instead (one write and one fsync
// of about a hundred bytes); everything else still rewrites the state
// file, which starts a new, empty journal (docs/ipam.md, "Persistence").
//
// Layout: text lines, each "CRC SP JSON LF" where CRC is the CRC-32C of
// the JSON in 8 hex digits. The first line is the header
// {"journal":1,"gen":G}; the state file names G (its field "journal"), so
// a journal left over from another state file, one the state file was
// rewritten after, is never replayed. Then one record per change,
// {"op":"add",...allocation...} or {"op":"del",...allocation...}.
//
// Crash safety: a record is appended and fsynced before the allocation is
// handed out or anything that carries it is sent (I4), and a rewrite of
// the state file names a new generation before the journal is replaced.
// A crash in the middle of an append leaves a torn last line, which is
// dropped on load: its change was never acknowledged to anyone. A bad
// line before the last is corruption, refused like a corrupt state file.

// journalFormat is the header's "journal" value.
const journalFormat = 1

// minJournalBytes: the journal is folded into the state file once it is
// larger than the state file or this, whichever is more, so replaying it
// costs at most about what reading the state file does, and the rewrite
// it saves amortizes over at least a few hundred records.
// A variable only so that tests can fold the journal often.
var minJournalBytes = 64 << 10

// journalPath is the journal beside the state file path: ipam.json ->
// ipam.journal.
func journalPath(stateFile string) string {
	return strings.TrimSuffix(stateFile, filepath.Ext(stateFile)) + ".journal"
}

// journal is the allocator's handle on its journal file. Guarded by the
// allocator's mutex.
type journal struct {
	path string
	// named is the generation the state file on disk names, 0 for none.
	named uint64
	// ok says records may be appended: the journal of generation named
	// was started, and no append to it failed since.
	ok bool
	// size is the journal's length in bytes, header included.
	size int
	// limit is the size past which the next change rewrites the state file.
	limit int
	// scratch holds the record being encoded.
	scratch bytes.Buffer
	// off makes every change rewrite the state file, as before the
	// journal: for BenchmarkAllocateLargeState's side-by-side figure.
	off bool
}

// usable says whether the next allocation change may be a record.
func (j *journal) usable() bool { return j.ok && j.size < j.limit }

// journalRecord is a line of the journal: the header, or one change.
type journalRecord struct {
	Journal int    `json:"journal,omitempty"`
	Gen     uint64 `json:"gen,omitempty"`
	Op      string `json:"op,omitempty"` // journalAdd or journalDel
	Allocation
}

const (
	journalAdd = "add"
	journalDel = "del"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendLine appends rec as one journal line to buf.
func appendLine(buf *bytes.Buffer, rec journalRecord) error {
	js, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	var crc [8]byte
	buf.Write(strconv.AppendUint(crc[:0], uint64(crc32.Checksum(js, castagnoli))|1<<32, 16)[1:])
	buf.WriteByte(' ')
	buf.Write(js)
	buf.WriteByte('\n')
	return nil
}

// newJournalGen picks a generation: random, so that no journal of an
// earlier state file (one left behind by a crash) can carry the same one.
func newJournalGen() uint64 {
	for {
		if g := rand.Uint64(); g != 0 {
			return g
		}
	}
}

// startJournalLocked replaces the journal by an empty one of generation
// gen, which the state file just written names. On error the journal is
// off until the next state file write (which tries again).
func (a *Allocator) startJournalLocked(gen uint64, fileSize int) {
	j := &a.journal
	j.ok, j.size = false, 0
	j.scratch.Reset()
	if err := appendLine(&j.scratch, journalRecord{Journal: journalFormat, Gen: gen}); err != nil {
		return
	}
	if err := a.store.write(j.path, j.scratch.Bytes()); err != nil {
		a.log.Warn("journal not started: every allocation rewrites the state file until it is", "file", j.path, "err", err)
		return
	}
	j.ok, j.size, j.limit = true, j.scratch.Len(), max(minJournalBytes, fileSize)
}

// recordLocked makes one allocation change durable: a journal record when
// it is the only change since the state file was written, else the whole
// state file. The caller has applied the change and published; on error
// it rolls both back, and nothing was sent.
func (a *Allocator) recordLocked(op string, k Key, off uint64, network string) error {
	j := &a.journal
	if a.dirty || !j.usable() {
		return a.saveLocked()
	}
	j.scratch.Reset()
	rec := journalRecord{Op: op, Allocation: Allocation{ContainerID: k.ContainerID, IfName: k.IfName, Addr: offsetAddr(a.cfg.Range, off), Network: network}}
	if err := appendLine(&j.scratch, rec); err != nil {
		return err
	}
	if err := a.store.appendFile(j.path, j.scratch.Bytes()); err != nil {
		// The journal may end in a torn line now: nothing more goes
		// after it. The next change rewrites the state file, which
		// starts a new journal.
		j.ok = false
		return fmt.Errorf("ipam: appending to journal %s: %w", j.path, err)
	}
	j.size += j.scratch.Len()
	return nil
}

// replayJournal applies the journal of generation gen to allocs, the state
// file's allocations, and returns the result. A missing journal, or one of
// another generation, adds nothing; a torn last line is dropped (dropped
// says so, for the log). Any other bad line is ErrCorruptState: starting
// without a record it holds could hand a live pod's address out again.
func replayJournal(data []byte, gen uint64, cfg Config, allocs []Allocation) (out []Allocation, dropped bool, err error) {
	lines := bytes.SplitAfter(data, []byte{'\n'})
	if n := len(lines); n > 0 && len(lines[n-1]) == 0 {
		lines = lines[:n-1]
	}
	parse := func(line []byte) (journalRecord, bool) {
		var rec journalRecord
		body, ok := bytes.CutSuffix(line, []byte{'\n'})
		if !ok || len(body) < 10 || body[8] != ' ' {
			return rec, false
		}
		crc, err := strconv.ParseUint(string(body[:8]), 16, 32)
		if err != nil || uint32(crc) != crc32.Checksum(body[9:], castagnoli) {
			return rec, false
		}
		dec := json.NewDecoder(bytes.NewReader(body[9:]))
		dec.DisallowUnknownFields()
		return rec, dec.Decode(&rec) == nil
	}
	if len(lines) == 0 {
		return allocs, false, nil
	}
	head, ok := parse(lines[0])
	if !ok || head.Journal != journalFormat || head.Gen != gen {
		// Another generation (the state file was rewritten after it),
		// or a header torn as it was written: nothing here is newer than
		// the state file.
		return allocs, false, nil
	}
	set := newAllocSet(cfg.Range, len(allocs))
	for _, al := range allocs {
		if err := set.add(al); err != nil {
			return nil, false, fmt.Errorf("%w: state file: %v", ErrCorruptState, err)
		}
	}
	for i, line := range lines[1:] {
		rec, ok := parse(line)
		if !ok {
			if i == len(lines)-2 {
				return set.list(), true, nil
			}
			return nil, false, fmt.Errorf("%w: journal line %d is damaged", ErrCorruptState, i+2)
		}
		switch rec.Op {
		case journalAdd:
			err = set.add(rec.Allocation)
		case journalDel:
			err = set.release(rec.Allocation)
		default:
			err = fmt.Errorf("unknown operation %q", rec.Op)
		}
		if err != nil {
			return nil, false, fmt.Errorf("%w: journal line %d: %v", ErrCorruptState, i+2, err)
		}
	}
	return set.list(), false, nil
}

// readJournal reads the journal at path: none is no journal.
func readJournal(store stateStore, path string) ([]byte, error) {
	data, err := store.read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: reading journal %s: %w", path, err)
	}
	return data, nil
}
