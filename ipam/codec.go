package ipam

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"unique"
)

// Wire format of a full state (also embedded in the state file). Compact
// binary with varints and a name table, because push/pull ships it whole:
//
//	magic "MIP2" | addr[4] bits | sender | seed.members seed.id
//	| nNames name... | nSegs (startDelta version owner+1 dead+1)...
//	| nPeers (name epoch version id free flags nHeld heldDelta...)...
//
// Strings are a length byte then bytes; names are indexes into the table.
//
// A state of an IPv6 cluster range has its own magic and header and the
// same body:
//
//	magic "MIP6" | addr[16] bits ringBits | sender | ... as above
//
// A state with signed peer infos (docs/ipam.md, "Signed peer infos") has
// its own magics, "MIP3" (IPv4) and "MIP7" (IPv6), the same headers, and
// after each peer's Held list:
//
//	... nHeld heldDelta... writer sigLen sig
//
// An info whose flags have flagOwned set lists the space its peer owns
// right after its Held list, in either layout (appendOwned), and one with
// flagAcks the removals it acknowledges after that:
//
//	... nHeld heldDelta... [nOwned (gap length)...] [nAcks (name epoch)...]
//	    [nVouches (name nRuns (gap length)...)...] [writer sigLen sig]
//
// (flagVouches: the peers it vouches for, each with its runs.)
//
// writer is a name index (0: the info is unsigned), sigLen 0 or 64, sig
// the writer's ed25519 signature of infoSigBytes. A release before signed
// infos refuses these magics ("unknown IPAM state layout"), so a peer sends
// them only once every member reads them (Identities.AllRead); until then
// it sends MIP2/MIP6 without signatures.
//
// The IPv4 form is unchanged, byte for byte, from the release before IPv6
// ranges existed, so such peers keep interoperating. That release refuses
// the IPv6 form by its magic ("bad magic: not an IPAM state", counted as a
// corrupt input) instead of reading the first 4 bytes of an IPv6 address
// as an IPv4 range. ringBits is the number of host bits the ring covers
// (maxRingBits6 caps it): a peer whose ring would cover another number of
// addresses gives offsets another meaning, so its state is refused.
const (
	stateMagic        = "MIP2" // IPv4; MIP1 had no peer epoch
	stateMagic6       = "MIP6" // IPv6
	stateMagicSigned  = "MIP3" // IPv4 with signed peer infos
	stateMagicSigned6 = "MIP7" // IPv6 with signed peer infos
	magicFamily       = "MIP"  // what the magics share, for a clearer error
	maxName           = 255
	maxItems          = 1 << 22 // bound on any count, well above 1000 peers
)

type wireState struct {
	prefix netip.Prefix
	sender string
	st     state
	// verified holds the signature checks done before the merge took
	// the lock (preVerify), by name; not part of the wire form.
	verified map[string]error
	// delta marks a delta (msgDelta): part of its writer's state, so
	// neither an echo nor a recovery exchange; not part of the wire form.
	delta bool
}

// encodeState is the form every release reads: MIP2 or MIP6, without
// signatures.
func encodeState(prefix netip.Prefix, sender string, st state) []byte {
	return encodeStateAs(prefix, sender, st, false)
}

// encodeStateAs encodes st with its infos' signatures (MIP3, MIP7) when
// signed, else without (MIP2, MIP6).
func encodeStateAs(prefix netip.Prefix, sender string, st state, signed bool) []byte {
	names := map[string]uint64{}
	var table []string
	idx := func(s string) uint64 {
		if s == "" {
			return 0
		}
		if i, ok := names[s]; ok {
			return i + 1
		}
		names[s] = uint64(len(table))
		table = append(table, s)
		return uint64(len(table))
	}
	// Collect names first so the table precedes its uses.
	for _, sg := range st.ring.segs {
		idx(sg.e.Owner)
		idx(sg.e.Dead)
	}
	peerNames := make([]string, 0, len(st.peers))
	for n := range st.peers {
		peerNames = append(peerNames, n)
	}
	slices.Sort(peerNames)
	for _, n := range peerNames {
		idx(n)
	}
	for _, n := range peerNames {
		for _, k := range st.peers[n].Acks {
			idx(k.Name)
		}
		for _, v := range st.peers[n].Vouches {
			idx(v.Name)
		}
	}
	if signed {
		for _, n := range peerNames {
			idx(st.peers[n].Writer)
		}
	}

	b := make([]byte, 0, 64+16*len(st.ring.segs)+24*len(table))
	if prefix.Addr().Is4() {
		b = append(b, pick(signed, stateMagicSigned, stateMagic)...)
		a4 := prefix.Addr().As4()
		b = append(b, a4[:]...)
		b = append(b, byte(prefix.Bits()))
	} else {
		b = append(b, pick(signed, stateMagicSigned6, stateMagic6)...)
		a16 := prefix.Addr().As16()
		b = append(b, a16[:]...)
		b = append(b, byte(prefix.Bits()), byte(ringBits(prefix)))
	}
	b = appendString(b, sender)
	b = binary.AppendUvarint(b, st.seed.Members)
	b = binary.AppendUvarint(b, st.seed.ID)
	b = binary.AppendUvarint(b, uint64(len(table)))
	for _, n := range table {
		b = appendString(b, n)
	}
	b = binary.AppendUvarint(b, uint64(len(st.ring.segs)))
	prev := uint64(0)
	for _, sg := range st.ring.segs {
		b = binary.AppendUvarint(b, sg.start-prev)
		prev = sg.start
		b = binary.AppendUvarint(b, sg.e.Version)
		b = binary.AppendUvarint(b, idx(sg.e.Owner))
		b = binary.AppendUvarint(b, idx(sg.e.Dead))
	}
	b = binary.AppendUvarint(b, uint64(len(peerNames)))
	for _, n := range peerNames {
		p := st.peers[n]
		b = binary.AppendUvarint(b, idx(n))
		b = binary.AppendUvarint(b, p.Epoch)
		b = binary.AppendUvarint(b, p.Version)
		b = appendString(b, p.ID)
		b = binary.AppendUvarint(b, p.Free)
		b = append(b, p.flags())
		b = binary.AppendUvarint(b, uint64(len(p.Held)))
		prev := uint64(0)
		for _, h := range p.Held {
			b = binary.AppendUvarint(b, h-prev)
			prev = h
		}
		if p.ListsOwned {
			b = appendOwned(b, p.Owned)
		}
		if p.ListsAcks {
			b = binary.AppendUvarint(b, uint64(len(p.Acks)))
			for _, k := range p.Acks {
				b = binary.AppendUvarint(b, idx(k.Name))
				b = binary.AppendUvarint(b, k.Epoch)
			}
		}
		if p.ListsVouches {
			b = appendVouches(b, p.Vouches, func(b []byte, s string) []byte { return binary.AppendUvarint(b, idx(s)) })
		}
		if signed {
			if len(p.Sig) != sigSize || p.Writer == "" {
				b = append(b, 0, 0) // unsigned (learnt from a previous release)
				continue
			}
			b = binary.AppendUvarint(b, idx(p.Writer))
			b = append(b, sigSize)
			b = append(b, p.Sig...)
		}
	}
	return b
}

// appendOwned writes a peer's owned spans (sorted, disjoint, not
// adjacent): their count, then for each the gap from the end of the one
// before (from 0 for the first) and its length.
func appendOwned(b []byte, owned []span) []byte {
	b = binary.AppendUvarint(b, uint64(len(owned)))
	prev := uint64(0)
	for _, sp := range owned {
		b = binary.AppendUvarint(b, sp.start-prev)
		b = binary.AppendUvarint(b, sp.len())
		prev = sp.end
	}
	return b
}

// owned reads what appendOwned wrote, refusing spans that are empty,
// unsorted, adjacent or beyond the range: an honest peer lists maximal
// runs, so every list has one form.
func (d *decoder) owned(size uint64) []span {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	out := make([]span, 0, n)
	prev := uint64(0)
	for i := 0; i < n && d.err == nil; i++ {
		gap, l := d.uvarint(), d.uvarint()
		switch {
		case d.err != nil:
		case i > 0 && gap == 0:
			d.fail("owned spans adjacent or overlapping")
		case l == 0:
			d.fail("empty owned span")
		case gap > size || l > size || prev+gap+l > size:
			d.fail("owned span beyond the range")
		default:
			out = append(out, span{prev + gap, prev + gap + l})
			prev += gap + l
		}
	}
	return out
}

// acks reads an info's acknowledgements: name indexes and epochs, the
// names strictly increasing (one form per list).
func (d *decoder) acks(name func() string) []ack {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	out := make([]ack, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		k := ack{Name: name(), Epoch: d.uvarint()}
		switch {
		case d.err != nil:
		case k.Name == "":
			d.fail("acknowledgement without a name")
		case i > 0 && k.Name <= out[i-1].Name:
			d.fail("acknowledgements not sorted by name")
		default:
			out = append(out, k)
		}
	}
	return out
}

func pick(c bool, a, b string) string {
	if c {
		return a
	}
	return b
}

func appendString(b []byte, s string) []byte {
	if len(s) > maxName {
		s = s[:maxName]
	}
	b = append(b, byte(len(s)))
	return append(b, s...)
}

// decoder reads the wire format; the first error sticks and every later
// read returns zero values, so decodeState checks once at the end of each
// section and never indexes out of bounds.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("truncated or overlong varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.fail("truncated: want %d bytes, have %d", n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// str reads a name (peer names, IDs). Names are interned: every state
// merged carries every peer's name again, and the copies it keeps (the
// peer table, the ring, liveness) would otherwise each hold their own.
// unique's map holds a name only while something refers to it, so hostile
// names do not pile up.
func (d *decoder) str() string {
	l := d.bytes(1)
	if l == nil {
		return ""
	}
	return unique.Make(string(d.bytes(int(l[0])))).Value()
}

// count reads an item count and rejects counts that cannot fit in what is
// left (each item takes at least minBytes), so garbage cannot make us
// allocate gigabytes.
func (d *decoder) count(minBytes int) int {
	n := d.uvarint()
	if d.err == nil && (n > maxItems || n*uint64(minBytes) > uint64(len(d.b))) {
		d.fail("count %d exceeds the remaining %d bytes", n, len(d.b))
		return 0
	}
	return int(n)
}

func decodeState(buf []byte) (wireState, error) {
	var w wireState
	d := &decoder{b: buf}
	prefix, signed, err := decodePrefix(d)
	if err != nil {
		return w, err
	}
	w.prefix = prefix
	size := rangeSize(prefix)
	w.sender = d.str()
	w.st.seed.Members = d.uvarint()
	w.st.seed.ID = d.uvarint()
	table := make([]string, d.count(2))
	for i := range table {
		table[i] = d.str()
		if d.err == nil && table[i] == "" {
			d.fail("empty peer name")
		}
	}
	name := func() string {
		i := d.uvarint()
		if i == 0 || d.err != nil {
			return ""
		}
		if i > uint64(len(table)) {
			d.fail("name index %d out of a table of %d", i, len(table))
			return ""
		}
		return table[i-1]
	}
	nSegs := d.count(4)
	if d.err == nil && nSegs == 0 {
		d.fail("ring has no segments")
	}
	w.st.ring = ring{size: size, segs: make([]seg, 0, nSegs)}
	pos := uint64(0)
	for i := 0; i < nSegs && d.err == nil; i++ {
		delta := d.uvarint()
		if i == 0 && delta != 0 {
			d.fail("ring does not start at offset 0")
		}
		if i > 0 && delta == 0 {
			d.fail("empty segment at offset %d", pos)
		}
		if delta >= size || pos+delta >= size {
			d.fail("segment start beyond the range")
		}
		pos += delta
		e := entry{Version: d.uvarint(), Owner: name(), Dead: name()}
		// Re-canonicalise: a sender may not coalesce, we always do.
		w.st.ring.segs = appendSeg(w.st.ring.segs, pos, e)
	}
	nPeers := d.count(6)
	w.st.peers = make(map[string]peerInfo, nPeers)
	for i := 0; i < nPeers && d.err == nil; i++ {
		n := name()
		if d.err == nil && n == "" {
			d.fail("peer without a name")
		}
		p := peerInfo{Epoch: d.uvarint(), Version: d.uvarint(), ID: d.str(), Free: d.uvarint()}
		if flags := d.bytes(1); flags != nil {
			p.setFlags(flags[0])
		}
		nHeld := d.count(1)
		if nHeld > 0 {
			p.Held = make([]uint64, 0, nHeld)
		}
		prev := uint64(0)
		for j := 0; j < nHeld && d.err == nil; j++ {
			delta := d.uvarint()
			if j > 0 && delta == 0 {
				d.fail("held addresses not strictly increasing")
			}
			if delta >= size || prev+delta >= size {
				d.fail("held address beyond the range")
			}
			prev += delta
			p.Held = append(p.Held, prev)
		}
		if p.ListsOwned {
			p.Owned = d.owned(size)
		}
		if p.ListsAcks {
			p.Acks = d.acks(name)
		}
		if p.ListsVouches {
			p.Vouches = d.vouches(name, size)
		}
		if signed {
			p.Writer = name()
			switch l := d.bytes(1); {
			case l == nil:
			case l[0] == sigSize && p.Writer != "":
				p.Sig = bytes.Clone(d.bytes(sigSize))
			case l[0] != 0 || p.Writer != "":
				d.fail("peer %q: signature of %d bytes by %q (want %d bytes and a writer, or neither)", n, l[0], p.Writer, sigSize)
			}
		}
		if _, dup := w.st.peers[n]; dup && d.err == nil {
			d.fail("peer %q listed twice", n)
		}
		w.st.peers[n] = p
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return wireState{}, d.err
	}
	if w.st.seed.isZero() {
		// An unseeded ring has no owners; anything else is forged.
		if len(w.st.ring.segs) != 1 || w.st.ring.segs[0].e != (entry{}) {
			return wireState{}, errors.New("unseeded state with a non-empty ring")
		}
	}
	return w, nil
}

// decodePrefix reads the magic and the cluster range of any form, and
// whether its infos carry signatures.
func decodePrefix(d *decoder) (netip.Prefix, bool, error) {
	magic := string(d.bytes(len(stateMagic)))
	var p netip.Prefix
	var plen byte
	ringB := -1 // IPv6 only
	signed := magic == stateMagicSigned || magic == stateMagicSigned6
	switch magic {
	case stateMagic, stateMagicSigned:
		a, bitsB := d.bytes(4), d.bytes(1)
		if d.err != nil {
			return p, false, d.err
		}
		plen = bitsB[0]
		p = netip.PrefixFrom(netip.AddrFrom4([4]byte(a)), int(plen))
	case stateMagic6, stateMagicSigned6:
		a, bitsB, rb := d.bytes(16), d.bytes(1), d.bytes(1)
		if d.err != nil {
			return p, false, d.err
		}
		plen = bitsB[0]
		p = netip.PrefixFrom(netip.AddrFrom16([16]byte(a)), int(plen))
		ringB = int(rb[0])
	default:
		if d.err == nil && len(magic) == len(stateMagic) && magic[:len(magicFamily)] == magicFamily {
			return p, false, fmt.Errorf("unknown IPAM state layout %q (this release reads %s, %s, %s and %s)", magic, stateMagic, stateMagic6, stateMagicSigned, stateMagicSigned6)
		}
		return p, false, errors.New("bad magic: not an IPAM state")
	}
	if err := checkRange(p); err != nil {
		return netip.Prefix{}, false, fmt.Errorf("bad prefix length %d: %w", plen, err)
	}
	if want := ringBits(p); ringB >= 0 && ringB != want {
		return netip.Prefix{}, false, fmt.Errorf("the sender's ring covers 2^%d addresses of %v, this release's covers 2^%d: offsets would mean other addresses", ringB, p.Masked(), want)
	}
	return p.Masked(), signed, nil
}

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }

// Bits of a peer info's flags byte, on the wire and in what its signature
// covers; a reader ignores the others.
const (
	flagLeased  byte = 1
	flagRemoved byte = 2
	flagJoining byte = 4 // read by this release on; sent once every member reads it (Config.Admission)
	// flagOwned: the owned spans follow the Held list. Read by this
	// release on, sent once every member reads it (Config.ListOwned):
	// an earlier release would take the list for the next field.
	flagOwned byte = 8
	// flagAcks: the acknowledged removals follow the owned spans. Read
	// by this release on, sent once every member reads it
	// (Config.AckRemovals), for the same reason.
	flagAcks byte = 16
	// flagVouches: the vouches follow the acknowledgements, and the
	// peer's space is protected by vouches. Read by this release on, sent
	// once every member reads it (Config.VouchReclaims).
	flagVouches byte = 32
)

func (p peerInfo) flags() byte {
	var f byte
	if p.Leased {
		f |= flagLeased
	}
	if p.Removed {
		f |= flagRemoved
	}
	if p.Joining {
		f |= flagJoining
	}
	if p.ListsOwned {
		f |= flagOwned
	}
	if p.ListsAcks {
		f |= flagAcks
	}
	if p.ListsVouches {
		f |= flagVouches
	}
	return f
}

func (p *peerInfo) setFlags(f byte) {
	p.Leased, p.Removed, p.Joining = f&flagLeased != 0, f&flagRemoved != 0, f&flagJoining != 0
	p.ListsOwned = f&flagOwned != 0
	p.ListsAcks = f&flagAcks != 0
	p.ListsVouches = f&flagVouches != 0
}
