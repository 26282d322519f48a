package policy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"github.com/meshnet/mesh/internal/nftutil"
	"golang.org/x/sys/unix"
)

// Applier programs rulesets. NFT is the real one; tests use fakes.
type Applier interface {
	// Apply replaces the content of the table with rs in one atomic
	// transaction, creating the table if needed. Counters keep their
	// values across it (those of rs are ignored).
	Apply(rs *Ruleset) error
	// Counters returns the packets counted by each counter of the table,
	// by counter name; none when the table does not exist.
	Counters() (map[string]uint64, error)
	// Remove deletes the table; no error if it does not exist.
	Remove() error
	// Intact reports whether the live table still holds rs, as far as a
	// cheap comparison tells: the table, every chain with its number of
	// rules, and the number of elements of the pod maps.
	Intact(rs *Ruleset) (bool, error)
}

// NFT programs the table with netlink (github.com/google/nftables).
type NFT struct {
	opts []nftables.ConnOption
	mu   sync.Mutex
	// live is the ruleset last programmed, nil when the table may hold
	// something else (none applied yet, a failed apply, Intact found it
	// changed, Remove): the next Apply then replaces the whole table.
	live *Ruleset
	ops  int // operations of the last Apply
}

// NewNFT returns an applier for the network namespace of the calling
// process, or another one with nftables.WithNetNSFd.
func NewNFT(opts ...nftables.ConnOption) *NFT {
	return &NFT{opts: opts}
}

// elemChunk bounds the set elements of one netlink message.
const elemChunk = 512

// sockBuf is the socket buffer size asked for: a rebuild of a large table is
// one batch of several megabytes, acknowledged message by message.
const sockBuf = 32 << 20

var table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}

func (n *NFT) conn(extra ...nftables.ConnOption) (*nftables.Conn, error) {
	opts := append(append([]nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}, n.opts...), extra...)
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("failed to open nftables netlink connection: %w", err)
	}
	return c, nil
}

// bigBuffers raises the socket's buffers past the sysctl limits (root may).
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], sockBuf) != nil {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], sockBuf); e != nil {
					serr = e
				}
			}
		}
	})
	return errors.Join(err, serr)
}

// exists reports whether our table exists.
func exists(c *nftables.Conn) (bool, error) { return nftutil.TableExists(c, table) }

func (n *NFT) counters(c *nftables.Conn) (map[string]*nftables.CounterObj, error) {
	ok, err := exists(c)
	if err != nil || !ok {
		return nil, err
	}
	out := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(c, table, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Counters implements Applier.
func (n *NFT) Counters() (map[string]uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return nil, err
	}
	objs, err := n.counters(c)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(objs))
	for name, o := range objs {
		out[name] = o.Packets
	}
	return out, nil
}

// Remove implements Applier.
func (n *NFT) Remove() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return err
	}
	n.live = nil
	c.AddTable(table)
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to delete nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// Apply implements Applier. When the table holds the ruleset of the last
// Apply, it changes only what differs (diffRulesets): elements of sets and
// maps, new and deleted chains and counters, in one transaction; the work
// of a change is then the size of the change, not of the table. Otherwise
// (the first Apply, after a failure or a change from outside, or when the
// change fails) the transaction is: add the table (a no-op if it exists),
// delete it, add it with all its content. The kernel commits either as a
// whole: packets see the old rules or the new ones, never none. Counters
// keep their values: untouched by a change; read just before a whole
// rewrite and carried over (packets counted in between, a few
// milliseconds, are lost).
func (n *NFT) Apply(rs *Ruleset) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.live != nil {
		d := diffRulesets(n.live, rs)
		err := n.applyDelta(rs, d)
		if err == nil {
			n.live, n.ops = rs, d.ops()
			return nil
		}
		// The table was not what we last programmed (changed from
		// outside since the last check): rewrite it whole.
	}
	n.live = nil
	if err := n.applyFull(rs); err != nil {
		return err
	}
	n.live, n.ops = rs, fullOps(rs)
	return nil
}

// RewriteNext makes the next Apply rewrite the whole table, as at start: a new
// Run of the controller (after an API outage, in a restarted daemon) does
// not trust what was programmed before.
func (n *NFT) RewriteNext() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.live = nil
}

// LastOps returns the number of nftables operations of the last Apply
// (objects added or deleted, chains flushed, rules written, elements added
// or deleted): the size of a change, or of the whole table when it was
// rewritten.
func (n *NFT) LastOps() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ops
}

func (n *NFT) applyFull(rs *Ruleset) error {
	c, err := n.conn()
	if err != nil {
		return err
	}
	old, err := n.counters(c)
	if err != nil {
		return err
	}
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	if err := program(c, rs, old); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to program nftables table inet %s: %w", TableName, err)
	}
	return nil
}

func (n *NFT) applyDelta(rs *Ruleset, d *delta) error {
	if d.empty() {
		return nil
	}
	c, err := n.conn()
	if err != nil {
		return err
	}
	if err := programDelta(c, rs, d); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to change nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// programDelta queues d on c, in an order the kernel accepts within one
// transaction: what is referred to exists before what refers to it, and
// what refers is gone before what it referred to.
func programDelta(c *nftables.Conn, rs *Ruleset, d *delta) error {
	for _, ctr := range d.addCounters {
		c.AddObj(&nftables.CounterObj{Table: table, Name: ctr.Name})
	}
	for _, name := range d.flush {
		c.FlushChain(&nftables.Chain{Table: table, Name: name})
	}
	// Every set and map of rs, for the rules: existing ones by name,
	// new ones as added (by ID within the transaction).
	sets := map[string]*nftables.Set{}
	for _, s := range rs.Sets {
		def, _, err := nftSet(s.bare())
		if err != nil {
			return err
		}
		sets[s.Name] = def
	}
	for _, name := range d.delSets {
		if _, stays := sets[name]; stays { // redefined: added again below
			c.DelSet(&nftables.Set{Table: table, Name: name})
		}
	}
	for _, s := range d.addSets {
		set, elems, err := nftSet(s)
		if err != nil {
			return err
		}
		if err := addSet(c, set, elems); err != nil {
			return err
		}
		sets[s.Name] = set
	}
	for _, e := range d.elems {
		// Deleted first: a range that grows is deleted and added whole,
		// and must not overlap its old form.
		del, add := e.set, e.set
		del.Ranges, del.Triples = e.delR, e.delT
		add.Ranges, add.Triples = e.addR, e.addT
		set, delElems, err := nftSet(del)
		if err != nil {
			return err
		}
		if err := changeElems(c, set, delElems, c.SetDeleteElements); err != nil {
			return err
		}
		_, addElems, err := nftSet(add)
		if err != nil {
			return err
		}
		if err := changeElems(c, set, addElems, c.SetAddElements); err != nil {
			return err
		}
	}
	for _, m := range podMaps(rs) {
		for _, f := range families {
			sets[m.name+f.tag()] = mapSet(m.name, f)
		}
	}
	for _, ch := range d.addChains {
		nc := c.AddChain(&nftables.Chain{Table: table, Name: ch.Name})
		if err := addRules(c, nc, ch, sets); err != nil {
			return err
		}
	}
	for _, ch := range d.refill {
		if err := addRules(c, &nftables.Chain{Table: table, Name: ch.Name}, ch, sets); err != nil {
			return err
		}
	}
	for i, m := range podMaps(rs) {
		for _, f := range families {
			set := sets[m.name+f.tag()]
			if err := changeElems(c, set, mapElements(m.kind, ofFamily(d.maps[i].del, f, elemAddr)), c.SetDeleteElements); err != nil {
				return err
			}
			if err := changeElems(c, set, mapElements(m.kind, ofFamily(d.maps[i].add, f, elemAddr)), c.SetAddElements); err != nil {
				return err
			}
		}
	}
	for _, f := range families {
		self := selfSet(f)
		if err := changeElems(c, self, selfElements(ofFamily(d.selfDel, f, sameAddr)), c.SetDeleteElements); err != nil {
			return err
		}
		if err := changeElems(c, self, selfElements(ofFamily(d.selfAdd, f, sameAddr)), c.SetAddElements); err != nil {
			return err
		}
	}
	for _, name := range d.delChains {
		c.DelChain(&nftables.Chain{Table: table, Name: name})
	}
	for _, name := range d.delSets {
		if _, stays := sets[name]; !stays {
			c.DelSet(&nftables.Set{Table: table, Name: name})
		}
	}
	for _, name := range d.delCounters {
		c.DeleteObject(&nftables.CounterObj{Table: table, Name: name})
	}
	return nil
}

// changeElems queues an element change in chunks.
func changeElems(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement, op func(*nftables.Set, []nftables.SetElement) error) error {
	for rest := elems; len(rest) > 0; {
		n := min(len(rest), elemChunk)
		if err := op(s, rest[:n]); err != nil {
			return fmt.Errorf("failed to change the elements of set %s: %w", s.Name, err)
		}
		rest = rest[n:]
	}
	return nil
}

type podMap struct {
	name  string
	elems []MapElem
	kind  expr.VerdictKind
}

// podMaps are the verdict maps of rs, in the order of delta.maps; each is
// two nftables maps, name for the IPv4 elements and name+"6" for the IPv6
// ones (Family.tag).
func podMaps(rs *Ruleset) [3]podMap {
	return [3]podMap{{mapIngress, rs.Ingress, expr.VerdictJump}, {mapEgress, rs.Egress, expr.VerdictJump}, {mapDeny, rs.Deny, expr.VerdictGoto}}
}

// nftAddrType is the nftables key type of family f's addresses.
func nftAddrType(f Family) nftables.SetDatatype {
	if f == IPv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func mapSet(name string, f Family) *nftables.Set {
	return &nftables.Set{Table: table, Name: name + f.tag(), IsMap: true, KeyType: nftAddrType(f), DataType: nftables.TypeVerdict}
}

// mapElements are map elements of one family.
func mapElements(kind expr.VerdictKind, elems []MapElem) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(elems))
	for _, e := range elems {
		out = append(out, nftables.SetElement{Key: e.Addr.AsSlice(), VerdictData: &expr.Verdict{Kind: kind, Chain: e.Chain}})
	}
	return out
}

// selfKey is the key of a self set: source . destination address.
var selfKey = [...]nftables.SetDatatype{
	IPv4: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr),
	IPv6: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr),
}

func selfSet(f Family) *nftables.Set {
	return &nftables.Set{Table: table, Name: setSelf + f.tag(), KeyType: selfKey[f], Concatenation: true}
}

// selfElements are self set elements of one family.
func selfElements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, nftables.SetElement{Key: append(a.AsSlice(), a.AsSlice()...)})
	}
	return out
}

// addRules queues the rules of ch on nc.
func addRules(c *nftables.Conn, nc *nftables.Chain, ch Chain, sets map[string]*nftables.Set) error {
	for _, r := range ch.Rules {
		exprs, err := ruleExprs(r, sets)
		if err != nil {
			return fmt.Errorf("chain %s: %w", ch.Name, err)
		}
		nr := &nftables.Rule{Table: table, Chain: nc, Exprs: exprs}
		if r.Comment != "" {
			nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
		}
		c.AddRule(nr)
	}
	return nil
}

// program queues the table's content on c.
func program(c *nftables.Conn, rs *Ruleset, old map[string]*nftables.CounterObj) error {
	for _, ctr := range rs.Counters {
		o := &nftables.CounterObj{Table: table, Name: ctr.Name, Packets: ctr.Packets, Bytes: ctr.Bytes}
		if prev := old[ctr.Name]; prev != nil {
			o.Packets, o.Bytes = prev.Packets, prev.Bytes
		}
		c.AddObj(o)
	}
	chains := map[string]*nftables.Chain{}
	for _, ch := range rs.Chains {
		chains[ch.Name] = c.AddChain(&nftables.Chain{Table: table, Name: ch.Name})
	}
	sets := map[string]*nftables.Set{}
	for _, s := range rs.Sets {
		set, elems, err := nftSet(s)
		if err != nil {
			return err
		}
		if err := addSet(c, set, elems); err != nil {
			return err
		}
		sets[s.Name] = set
	}
	for _, m := range podMaps(rs) {
		for _, e := range m.elems {
			if chains[e.Chain] == nil {
				return fmt.Errorf("map %s: element %s refers to unknown chain %q", m.name, e.Addr, e.Chain)
			}
		}
		for _, f := range families {
			set := mapSet(m.name, f)
			if err := addSet(c, set, mapElements(m.kind, ofFamily(m.elems, f, elemAddr))); err != nil {
				return err
			}
			sets[set.Name] = set
		}
	}
	for _, ch := range rs.Chains {
		if err := addRules(c, chains[ch.Name], ch, sets); err != nil {
			return err
		}
	}
	var self [len(families)]*nftables.Set
	for _, f := range families {
		self[f] = selfSet(f)
		if err := addSet(c, self[f], selfElements(ofFamily(rs.Self, f, sameAddr))); err != nil {
			return err
		}
	}
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Table: table, Name: chainForward, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	in := c.AddChain(&nftables.Chain{Table: table, Name: chainInput, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	// In the order of baseChainText.
	fwdRules := [][]expr.Any{ctEstablished()}
	for _, f := range families {
		fwdRules = append(fwdRules, selfRule(f, self[f]))
	}
	for _, m := range []struct {
		f    Field
		name string
	}{{Saddr, mapEgress}, {Daddr, mapIngress}} {
		for _, f := range families {
			fwdRules = append(fwdRules, vmapRule(m.f, f, sets[m.name+f.tag()]))
		}
	}
	inRules := [][]expr.Any{ctEstablished(), ndpRule()}
	for _, f := range families {
		inRules = append(inRules, vmapRule(Saddr, f, sets[mapEgress+f.tag()]))
	}
	for _, r := range fwdRules {
		c.AddRule(&nftables.Rule{Table: table, Chain: fwd, Exprs: r})
	}
	for _, r := range inRules {
		c.AddRule(&nftables.Rule{Table: table, Chain: in, Exprs: r})
	}
	return nil
}

// addSet queues a set and its elements in chunks.
func addSet(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	first := elems[:min(len(elems), elemChunk)]
	if err := c.AddSet(s, first); err != nil {
		return fmt.Errorf("failed to add set %s: %w", s.Name, err)
	}
	for rest := elems[len(first):]; len(rest) > 0; {
		n := min(len(rest), elemChunk)
		if err := c.SetAddElements(s, rest[:n]); err != nil {
			return fmt.Errorf("failed to add elements to set %s: %w", s.Name, err)
		}
		rest = rest[n:]
	}
	return nil
}

// addrProtoPort is the key of a SetAddrProtoPort set of each family.
var addrProtoPort = [...]nftables.SetDatatype{
	IPv4: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
	IPv6: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService),
}

func nftSet(s Set) (*nftables.Set, []nftables.SetElement, error) {
	if int(s.Family) >= len(families) {
		return nil, nil, fmt.Errorf("set %s: unknown family %d", s.Name, s.Family)
	}
	for _, r := range s.Ranges {
		if r.family() != s.Family || familyOf(r.hi) != s.Family {
			return nil, nil, fmt.Errorf("set %s of %s: range %s of the other family", s.Name, s.Family.addrType(), r)
		}
	}
	for _, t := range s.Triples {
		if familyOf(t.Addr) != s.Family {
			return nil, nil, fmt.Errorf("set %s of %s: element %s of the other family", s.Name, s.Family.addrType(), t)
		}
	}
	switch s.Kind {
	case SetAddrs:
		set := &nftables.Set{Table: table, Name: s.Name, KeyType: nftAddrType(s.Family), Interval: true, Comment: s.Comment}
		var elems []nftables.SetElement
		for _, r := range s.Ranges {
			elems = append(elems, nftables.SetElement{Key: r.lo.AsSlice()})
			// Past the family's last address there is no end element.
			if end := r.hi.Next(); end.IsValid() {
				elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
			}
		}
		return set, elems, nil
	case SetAddrProtoPort:
		set := &nftables.Set{Table: table, Name: s.Name, KeyType: addrProtoPort[s.Family], Concatenation: true, Comment: s.Comment}
		var elems []nftables.SetElement
		for _, t := range s.Triples {
			// Each part of a concatenation takes whole 4-byte registers.
			a := t.Addr.AsSlice()
			key := make([]byte, len(a)+8)
			copy(key, a)
			key[len(a)] = t.Proto
			binary.BigEndian.PutUint16(key[len(a)+4:], t.Port)
			elems = append(elems, nftables.SetElement{Key: key})
		}
		return set, elems, nil
	}
	return nil, nil, fmt.Errorf("set %s: unknown kind %d", s.Name, s.Kind)
}

// Registers: NFT_REG_1 is 16 bytes; a concatenation is built in the 4-byte
// registers it overlaps, NFT_REG32_00 (8) onwards: an IPv4 address takes
// one, an IPv6 address four.
const (
	reg1    = 1
	reg32_0 = 8
)

// after is the 4-byte register that follows an address of family f loaded
// into reg1, plus n.
func after(f Family, n uint32) uint32 { return reg32_0 + addrLen(f)/4 + n }

// addrLen is the length of an address of family f.
func addrLen(f Family) uint32 {
	if f == IPv6 {
		return 16
	}
	return 4
}

// Offsets of the addresses in the IPv4 and IPv6 headers.
const (
	saddrOff4, daddrOff4 = 12, 16
	saddrOff6, daddrOff6 = 8, 24
	hopLimitOff6         = 7
)

func loadAddr(f Field, fam Family, reg uint32) *expr.Payload {
	off := uint32(saddrOff4)
	switch {
	case fam == IPv6 && f == Daddr:
		off = daddrOff6
	case fam == IPv6:
		off = saddrOff6
	case f == Daddr:
		off = daddrOff4
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen(fam)}
}

// isFamily matches packets of family f: a base chain of the inet table
// sees both.
func isFamily(f Family) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if f == IPv6 {
		proto = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// ICMPv6 types of neighbour discovery (RFC 4861) that ndpRule lets pass.
const (
	icmpv6NeighborSolicit = 135
	icmpv6NeighborAdvert  = 136
)

// ndpRule accepts a pod's neighbour solicitations and advertisements to
// the node whatever its egress policies: without them the pod could not
// resolve its gateway, nor answer the node resolving it, and no IPv6
// packet would flow even where a policy allows it (the IPv4 counterpart,
// ARP, never reaches an inet hook). A hop limit of 255 proves the packet
// was not routed (RFC 4861 7.1.1): only the pods on the bridge can send
// one to the node, and port isolation admits only neighbour discovery
// for the pod's own address there (docs/architecture.md, Isolation).
// Router solicitations and advertisements are not let through: pods take
// their routes from CNI, and port isolation drops router advertisements
// from pods.
//
//	icmpv6 type 135-136 ip6 hoplimit 255 accept (nd-neighbor-solicit, nd-neighbor-advert)
func ndpRule() []expr.Any {
	return append(isFamily(IPv6),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: reg1, FromData: []byte{icmpv6NeighborSolicit}, ToData: []byte{icmpv6NeighborAdvert}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: hopLimitOff6, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{255}},
		&expr.Verdict{Kind: expr.VerdictAccept})
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// selfRule accepts a packet of family f whose source and destination are
// the same local pod: a hairpin through a Service, never judged by the
// pod's own policies (see Ruleset.Self).
//
//	ip saddr . ip daddr @self accept (ip6 ... @self6 for IPv6)
func selfRule(f Family, self *nftables.Set) []expr.Any {
	return append(isFamily(f), loadAddr(Saddr, f, reg1), loadAddr(Daddr, f, after(f, 0)),
		&expr.Lookup{SourceRegister: reg1, SetName: self.Name, SetID: self.ID},
		&expr.Verdict{Kind: expr.VerdictAccept})
}

func vmapRule(f Field, fam Family, m *nftables.Set) []expr.Any {
	return append(isFamily(fam), loadAddr(f, fam, reg1),
		&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true})
}

// ruleExprs translates a rule of a regular chain. Regular chains are only
// entered from the pod maps of one family, and a chain that both
// families' maps enter matches no address (Build), so no protocol family
// check is needed.
func ruleExprs(r Rule, sets map[string]*nftables.Set) ([]expr.Any, error) {
	var out []expr.Any
	set := func(name string) (*nftables.Set, error) {
		s := sets[name]
		if s == nil {
			return nil, fmt.Errorf("rule %q refers to unknown set %q", r, name)
		}
		return s, nil
	}
	if r.PeerSet != "" {
		s, err := set(r.PeerSet)
		if err != nil {
			return nil, err
		}
		out = append(out, loadAddr(r.Field, r.Family, reg1), &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID})
	}
	if r.TripleSet != "" {
		s, err := set(r.TripleSet)
		if err != nil {
			return nil, err
		}
		out = append(out,
			loadAddr(r.Field, r.Family, reg1),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: after(r.Family, 0)},
			&expr.Payload{DestRegister: after(r.Family, 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID})
	}
	if r.Proto != 0 {
		out = append(out,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{r.Proto}})
	}
	if r.PortLo != 0 {
		out = append(out, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		if r.PortHi > r.PortLo {
			out = append(out, &expr.Range{Op: expr.CmpOpEq, Register: reg1,
				FromData: binaryutil.BigEndian.PutUint16(r.PortLo), ToData: binaryutil.BigEndian.PutUint16(r.PortHi)})
		} else {
			out = append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(r.PortLo)})
		}
	}
	if r.DenyMap {
		s, err := set(mapDeny + r.Family.tag())
		if err != nil {
			return nil, err
		}
		return append(out, loadAddr(r.Field, r.Family, reg1),
			&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID, DestRegister: 0, IsDestRegSet: true}), nil
	}
	if r.Counter != "" {
		out = append(out, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: r.Counter})
	}
	var v expr.VerdictKind
	switch r.Verdict {
	case Accept:
		v = expr.VerdictAccept
	case Return:
		v = expr.VerdictReturn
	case Drop:
		v = expr.VerdictDrop
	default:
		return nil, fmt.Errorf("rule %q has no verdict", r)
	}
	return append(out, &expr.Verdict{Kind: v}), nil
}

// Base chains' rule counts, as program adds them.
const (
	forwardRules = 1 + 3*len(families)
	inputRules   = 2 + len(families)
)

// Intact implements Applier. It catches what an outside hand does to the
// table (`nft flush ruleset`, a deleted table, a flushed chain or map),
// not an edit that keeps every count.
func (n *NFT) Intact(rs *Ruleset) (ok bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	defer func() {
		if !ok {
			n.live = nil // rewrite it whole next time
		}
	}()
	return n.intact(rs)
}

func (n *NFT) intact(rs *Ruleset) (bool, error) {
	// One socket for the dumps (one per chain), not one each.
	c, err := n.conn(nftables.AsLasting())
	if err != nil {
		return false, err
	}
	defer c.CloseLasting()
	ok, err := exists(c)
	if err != nil || !ok {
		return false, err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("failed to list the chains of table inet %s: %w", TableName, err)
	}
	want := map[string]int{chainForward: forwardRules, chainInput: inputRules}
	for _, ch := range rs.Chains {
		want[ch.Name] = len(ch.Rules)
	}
	seen := 0
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != TableName {
			continue
		}
		seen++
		n, ok := want[ch.Name]
		if !ok {
			return false, nil
		}
		rules, err := c.GetRules(table, ch)
		if err != nil {
			return false, fmt.Errorf("failed to list the rules of chain %s of table inet %s: %w", ch.Name, TableName, err)
		}
		if len(rules) != n {
			return false, nil
		}
	}
	if seen != len(want) {
		return false, nil
	}
	for _, m := range podMaps(rs) {
		for _, f := range families {
			set := mapSet(m.name, f)
			got, err := c.GetSetElements(set)
			if err != nil {
				if nftutil.NotFound(err) {
					return false, nil
				}
				return false, fmt.Errorf("failed to list map %s of table inet %s: %w", set.Name, TableName, err)
			}
			if len(got) != len(ofFamily(m.elems, f, elemAddr)) {
				return false, nil
			}
		}
	}
	return true, nil
}
