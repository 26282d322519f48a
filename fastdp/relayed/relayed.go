// Package relayed counts the traffic this node routes for others: packets
// that arrive on the WireGuard device and leave by it again, which is what
// a relay does (docs/routing.md), and keeps the relay from sending ICMP
// redirects about it. One nftables table, "inet mesh-relay" (both
// families: IPv6 pods are relayed as IPv4 ones are), with a forward chain
// whose rules match both interface names and add to a named counter, the
// total, and to a counter of the peer the packet came from (they never
// drop nor change a packet), and an output chain that drops
// the ICMP and ICMPv6 redirects the host sends out of the device.
//
// What it counts: the IP packets (their length, headers included) the
// kernel forwards from the device back into it, after decryption and
// before re-encryption; not WireGuard's own overhead on the wire. Traffic
// this node's own pods send or receive never goes from the device to the
// device, so it is not counted.
//
// Why the redirects are dropped: the kernel sends one towards the source
// of every packet it forwards out of the interface it came in on, advising
// the source to send to the next hop directly. Through WireGuard the
// source cannot (its direct path is the one that is broken, and the pod
// the redirect goes to cannot act on it), so each is wasted bandwidth on
// the relayed paths. The
// sysctl send_redirects cannot turn them off for one device (the kernel
// sends IPv4 redirects when the device's or the "all" value is 1, and
// "all" is the host's), and IPv6 has no such sysctl at all.
//
// Per peer: the same forward chain looks the packet's source address up
// in two verdict maps, "src4" and "src6" (intervals of source addresses),
// whose elements jump to a chain of the peer the address belongs to,
// "peer-<id>", which adds to the peer's named counter of the same name.
// So a relayed packet is counted for the peer it came from, the one whose
// ranges hold its source address; a packet whose source is in no peer's
// ranges is counted in the total alone. The id is a hash of the peer's
// name (nftables names are short, peer names need not be), the same on
// every run, so a daemon that restarts finds its peers' counters again.
// google/nftables (v0.3.0) cannot express an object-reference map
// ("counter name ip saddr map @m"), hence the chains.
//
// The table is mesh's alone: Set creates it, or recreates it when its
// chains are not as wanted (which starts every counter from 0 again),
// Remove deletes it. When only the peers or their ranges change, Set
// updates the maps, the peers' chains and counters in place, in one
// transaction: the total and the counters of the peers that stay keep
// counting; a peer that goes loses its counter, and one that comes back
// starts from 0. The previous release's table, "ip mesh-relay" (IPv4
// only), goes with the first Set and with Remove.
package relayed

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/meshnet/mesh/internal/nftutil"
	"golang.org/x/sys/unix"
)

// TableName is the name of the table (family inet).
const TableName = "mesh-relay"

const (
	chainForward = "forward"
	chainOutput  = "output"
	counterName  = "relayed"
	// peerPrefix starts the names of the peers' chains and counters.
	peerPrefix = "peer-"
	map4       = "src4"
	map6       = "src6"
)

var (
	table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// legacyTable is the previous release's, which counted IPv4 alone.
	legacyTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
)

// chainRules is one chain of the table as Set makes it: its hook and its
// rules.
type chainRules struct {
	name  string
	hook  *nftables.ChainHook
	rules []rule
}

// rule is a rule's expressions and the comment that tells it from another
// device's or another release's, so that Set can tell an unchanged table
// from its comments alone.
type rule struct {
	comment string
	exprs   []expr.Any
}

// want is the table's chains for device:
//
//	chain forward: iifname DEV oifname DEV counter name "relayed"
//	               iifname DEV oifname DEV meta nfproto ipv4 ip saddr vmap @src4
//	               iifname DEV oifname DEV meta nfproto ipv6 ip6 saddr vmap @src6
//	chain output:  oifname DEV icmp type redirect drop
//	               oifname DEV icmpv6 type nd-redirect drop
//
// A source in no element of the maps matches no element: the packet goes
// on, counted in the total alone.
func want(device string) []chainRules {
	name := nftutil.IfName(device)
	relayedHere := func(more ...expr.Any) []expr.Any {
		return append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		}, more...)
	}
	bySource := func(nfproto byte, offset, length uint32, set string) []expr.Any {
		return relayedHere(
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: length},
			&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: set},
		)
	}
	return []chainRules{
		{name: chainForward, hook: nftables.ChainHookForward, rules: []rule{
			{"relayed:" + device, relayedHere(&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterName})},
			// The source address: at 12 in the IPv4 header, at 8 in
			// the IPv6 one.
			{"src4:" + device, bySource(unix.NFPROTO_IPV4, 12, 4, map4)},
			{"src6:" + device, bySource(unix.NFPROTO_IPV6, 8, 16, map6)},
		}},
		{name: chainOutput, hook: nftables.ChainHookOutput, rules: []rule{
			{"redirect:" + device, nftutil.RedirectDrop(device, false)},
			{"redirect6:" + device, nftutil.RedirectDrop(device, true)},
		}},
	}
}

// Source is a peer whose relayed packets are counted on their own: those
// whose source address lies in Prefixes, the peer's own ranges and the
// addresses its pods hold elsewhere (not the ranges of the peers it is a
// relay for). Where prefixes of two sources overlap, the longer prefix
// decides, as in WireGuard's AllowedIPs.
type Source struct {
	Name     string
	Prefixes []netip.Prefix
}

// Counts are the counters of the table.
type Counts struct {
	// Packets and Bytes are the total.
	Packets, Bytes uint64
	// Peers are the bytes counted for each source (by name) of the last
	// Set; absent for a source whose counter is missing.
	Peers map[string]uint64
}

// Counter programs and reads the table.
type Counter struct {
	opts  []nftables.ConnOption
	netns int        // its file descriptor; 0: the calling process's
	mu    sync.Mutex // serializes Set and Remove, guards names and settled
	// settled: the device and plan the table was last found in.
	settled nftutil.Settled
	// names maps the counters of the last Set's sources to their names.
	names map[string]string
	// writes counts the transactions Set sent, for tests.
	writes int
}

// New returns a Counter for the network namespace of the calling process.
func New() *Counter { return &Counter{} }

// NewInNetNS returns a Counter for the network namespace whose file
// descriptor is fd.
func NewInNetNS(fd int) *Counter {
	return &Counter{opts: []nftables.ConnOption{nftables.WithNetNSFd(fd)}, netns: fd}
}

func (c *Counter) conn() (*nftables.Conn, error) {
	nc, err := nftables.New(c.opts...)
	if err != nil {
		return nil, fmt.Errorf("failed to open nftables netlink connection: %w", err)
	}
	return nc, nil
}

// peerID is the name of the chain and of the counter of the source name:
// "peer-" and 64 bits of its SHA-256, short enough for any kernel's
// nftables names and the same on every run.
func peerID(name string) string {
	h := sha256.Sum256([]byte(name))
	return peerPrefix + hex.EncodeToString(h[:8])
}

// plan is what the per-peer part of the table should hold.
type plan struct {
	ids    map[string]string // chain and counter name -> source name
	elems4 []nftables.SetElement
	elems6 []nftables.SetElement
}

// makePlan gives each source its id and lays their prefixes out as the
// elements of the two maps. Of two names with the same id (a 64-bit hash:
// not expected among a mesh's members), the smaller keeps it and the other
// is counted in the total alone.
func makePlan(sources []Source) plan {
	p := plan{ids: map[string]string{}}
	var owned4, owned6 []owned
	for _, s := range slices.SortedFunc(slices.Values(sources), func(a, b Source) int { return strings.Compare(a.Name, b.Name) }) {
		id := peerID(s.Name)
		if prev, ok := p.ids[id]; ok && prev != s.Name {
			continue
		}
		p.ids[id] = s.Name
		for _, pr := range s.Prefixes {
			if a := pr.Addr(); a.Is4In6() {
				pr = netip.PrefixFrom(a.Unmap(), pr.Bits()-96) // invalid below /96
			}
			if pr = pr.Masked(); !pr.IsValid() {
				continue
			}
			if pr.Addr().Is4() {
				owned4 = append(owned4, owned{pr, id})
			} else {
				owned6 = append(owned6, owned{pr, id})
			}
		}
	}
	p.elems4 = elements(flatten(owned4))
	p.elems6 = elements(flatten(owned6))
	return p
}

// owned is a prefix and the id of its source.
type owned struct {
	prefix netip.Prefix
	id     string
}

// span is a run of addresses, from lo to hi inclusive, of one source.
type span struct {
	lo, hi netip.Addr
	id     string
}

// flatten turns prefixes of one family, which may nest, into disjoint
// spans in address order, each address going to the longest prefix that
// holds it; adjacent spans of one source are merged.
func flatten(in []owned) []span {
	slices.SortFunc(in, func(a, b owned) int {
		if c := a.prefix.Addr().Compare(b.prefix.Addr()); c != 0 {
			return c
		}
		if a.prefix.Bits() != b.prefix.Bits() {
			return a.prefix.Bits() - b.prefix.Bits()
		}
		return strings.Compare(a.id, b.id)
	})
	var out []span
	emit := func(lo, hi netip.Addr, id string) {
		if n := len(out); n > 0 && out[n-1].id == id && out[n-1].hi.Next() == lo {
			out[n-1].hi = hi
			return
		}
		out = append(out, span{lo, hi, id})
	}
	type open struct {
		hi netip.Addr
		id string
	}
	var stack []open
	var cur netip.Addr // the first address not yet laid out; invalid past the end
	// closeUntil lays out and closes the open prefixes that end before a
	// (all of them with an invalid a).
	closeUntil := func(a netip.Addr) {
		for len(stack) > 0 {
			top := stack[len(stack)-1]
			if a.IsValid() && top.hi.Compare(a) >= 0 {
				return
			}
			if cur.IsValid() && cur.Compare(top.hi) <= 0 {
				emit(cur, top.hi, top.id)
				cur = top.hi.Next()
			}
			stack = stack[:len(stack)-1]
		}
	}
	for _, o := range in {
		lo := o.prefix.Addr()
		closeUntil(lo)
		if len(stack) > 0 && cur.IsValid() && cur.Less(lo) {
			top := stack[len(stack)-1]
			emit(cur, lo.Prev(), top.id)
		}
		stack = append(stack, open{lastAddr(o.prefix), o.id})
		cur = lo
	}
	closeUntil(netip.Addr{})
	return out
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// elements are the elements of an interval map for spans: each span's
// first address jumps to its source's chain, and the address after it
// ends the interval unless the span ends the address space. The end is
// there even where the next span starts at the same address, as nft
// writes it: the kernel refuses a start that follows a start.
func elements(spans []span) []nftables.SetElement {
	var out []nftables.SetElement
	for _, s := range spans {
		out = append(out, nftables.SetElement{Key: s.lo.AsSlice(), Comment: s.id,
			VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: s.id}})
		if end := s.hi.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// elemKey identifies an element for comparing the maps with the plan: its
// key, whether it ends an interval, and the chain it jumps to (kept in its
// comment, as the library does not decode verdicts).
func elemKey(e nftables.SetElement) string {
	return fmt.Sprintf("%x/%t/%s", e.Key, e.IntervalEnd, e.Comment)
}

func sameElems(have, want []nftables.SetElement) bool {
	if len(have) != len(want) {
		return false
	}
	h := make([]string, len(have))
	for i, e := range have {
		h[i] = elemKey(e)
	}
	w := make([]string, len(want))
	for i, e := range want {
		w[i] = elemKey(e)
	}
	slices.Sort(h)
	slices.Sort(w)
	return slices.Equal(h, w)
}

func (p plan) sets() []*nftables.Set {
	return []*nftables.Set{
		{Table: table, Name: map4, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict, IsMap: true, Interval: true},
		{Table: table, Name: map6, KeyType: nftables.TypeIP6Addr, DataType: nftables.TypeVerdict, IsMap: true, Interval: true},
	}
}

func (p plan) elems(set string) []nftables.SetElement {
	if set == map4 {
		return p.elems4
	}
	return p.elems6
}

// Set makes the table count forwarding from device to device, in total
// and for each of sources by the packets' source addresses, and drop the
// redirects sent out of device. It writes nothing when the table is
// already as wanted, so calling it at every reconcile costs a few netlink
// dumps; it updates the per-peer part in place when only that differs, and
// otherwise replaces the table in one transaction.
func (c *Counter) Set(device string, sources []Source) error {
	if device == "" || len(device) >= unix.IFNAMSIZ || strings.ContainsRune(device, 0) {
		return fmt.Errorf("invalid interface name %q for nftables %s", device, nftutil.TableString(table))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := makePlan(sources)
	// Called on every reconcile: when the table was last found as this
	// plan wants and no nftables transaction was committed since, there
	// is nothing to read (nftutil.Settled).
	_, err := c.settled.Settle(c.netns, settledKey(device, p), func() (bool, error) { return true, c.set(device, p) })
	return err
}

// settledKey is what Set notes the table settled in: the device and the
// plan (its elements by elemKey: they hold pointers).
func settledKey(device string, p plan) string {
	var b strings.Builder
	b.WriteString(device)
	for _, id := range slices.Sorted(maps.Keys(p.ids)) {
		fmt.Fprintf(&b, " %s=%q", id, p.ids[id])
	}
	for _, es := range [][]nftables.SetElement{p.elems4, p.elems6} {
		b.WriteString(" |")
		for _, e := range es {
			b.WriteString(" " + elemKey(e))
		}
	}
	return b.String()
}

// set brings the table to p. Called with c.mu held.
func (c *Counter) set(device string, p plan) error {
	nc, err := c.conn()
	if err != nil {
		return err
	}
	chains := want(device)
	ok, err := upToDate(nc, chains)
	if err != nil {
		return err
	}
	if ok {
		if err := c.update(nc, p); err != nil {
			return err
		}
		c.names = p.ids
		return nil
	}
	deleteTables(nc)
	nc.AddTable(table)
	nc.AddObj(&nftables.CounterObj{Table: table, Name: counterName})
	for id := range p.ids {
		addPeer(nc, id)
	}
	for _, s := range p.sets() {
		if err := nc.AddSet(s, p.elems(s.Name)); err != nil {
			return fmt.Errorf("failed to add map %s to nftables %s: %w", s.Name, nftutil.TableString(table), err)
		}
	}
	accept := nftables.ChainPolicyAccept
	for _, w := range chains {
		ch := nc.AddChain(&nftables.Chain{Table: table, Name: w.name, Type: nftables.ChainTypeFilter,
			Hooknum: w.hook, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		for _, r := range w.rules {
			nc.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: r.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
		}
	}
	c.writes++
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("failed to program nftables %s: %w", nftutil.TableString(table), err)
	}
	c.names = p.ids
	return nil
}

// addPeer queues a source's counter and its chain, whose one rule adds
// to the counter:
//
//	chain peer-ID { counter name "peer-ID" }
func addPeer(nc *nftables.Conn, id string) {
	nc.AddObj(&nftables.CounterObj{Table: table, Name: id})
	ch := nc.AddChain(&nftables.Chain{Table: table, Name: id})
	nc.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: id},
	}})
}

// update brings the per-peer part of a table whose chains are as wanted
// to p, in one transaction, and writes nothing when it is already there:
// the maps are refilled when their elements differ, the counters and
// chains of sources that went are deleted and those of new ones added.
// The other counters keep their counts. A peer's chain is checked for
// being there, not for its rule: reading each chain's rules would cost a
// netlink dump per peer at every reconcile.
func (c *Counter) update(nc *nftables.Conn, p plan) error {
	counters := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(nc, table, counters); err != nil {
		return err
	}
	all, err := nc.ListChainsOfTableFamily(table.Family)
	if err != nil {
		return fmt.Errorf("failed to list the chains of nftables %s: %w", nftutil.TableString(table), err)
	}
	chains := map[string]bool{}
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == table.Name && strings.HasPrefix(ch.Name, peerPrefix) {
			chains[ch.Name] = true
		}
	}
	same := true
	for _, s := range p.sets() {
		have, err := nc.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("failed to list map %s of nftables %s: %w", s.Name, nftutil.TableString(table), err)
		}
		same = same && sameElems(have, p.elems(s.Name))
	}
	var gone []string
	for id := range chains {
		if _, ok := p.ids[id]; !ok {
			gone = append(gone, id)
		}
	}
	for id := range counters {
		if _, ok := p.ids[id]; !ok && strings.HasPrefix(id, peerPrefix) && !chains[id] {
			gone = append(gone, id)
		}
	}
	var missing []string
	for id := range p.ids {
		if counters[id] == nil || !chains[id] {
			missing = append(missing, id)
		}
	}
	if same && len(gone) == 0 && len(missing) == 0 {
		return nil
	}
	// The maps first: a chain or counter cannot go while an element
	// still jumps to it.
	for _, s := range p.sets() {
		nc.FlushSet(s)
	}
	// delPeer deletes what exists of a source's chain and counter.
	delPeer := func(id string) {
		if chains[id] {
			nc.FlushChain(&nftables.Chain{Table: table, Name: id})
			nc.DelChain(&nftables.Chain{Table: table, Name: id})
		}
		if counters[id] != nil {
			nc.DeleteObject(&nftables.CounterObj{Table: table, Name: id})
		}
	}
	for _, id := range gone {
		delPeer(id)
	}
	for _, id := range missing {
		// A half of a source's pair that is left (the other deleted by
		// hand) goes first, so that both are made afresh.
		delPeer(id)
		addPeer(nc, id)
	}
	for _, s := range p.sets() {
		if es := p.elems(s.Name); len(es) > 0 {
			if err := nc.SetAddElements(s, es); err != nil {
				return fmt.Errorf("failed to fill map %s of nftables %s: %w", s.Name, nftutil.TableString(table), err)
			}
		}
	}
	c.writes++
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("failed to update the per-peer counters of nftables %s: %w", nftutil.TableString(table), err)
	}
	return nil
}

// upToDate reports whether the table holds the total's counter, the two
// maps, and exactly the chains, hooks and rules (told by their comments)
// of chains.
func upToDate(nc *nftables.Conn, chains []chainRules) (bool, error) {
	for _, w := range chains {
		ch, err := nc.ListChain(table, w.name)
		if err != nil {
			if notExist(err) {
				return false, nil
			}
			return false, fmt.Errorf("failed to look up chain %s of nftables %s: %w", w.name, nftutil.TableString(table), err)
		}
		if ch == nil || ch.Hooknum == nil || *ch.Hooknum != *w.hook {
			return false, nil
		}
		rs, err := nc.GetRules(table, ch)
		if err != nil {
			if notExist(err) {
				return false, nil
			}
			return false, fmt.Errorf("failed to list the rules of chain %s of nftables %s: %w", w.name, nftutil.TableString(table), err)
		}
		if len(rs) != len(w.rules) {
			return false, nil
		}
		for i, r := range rs {
			if s, _ := userdata.GetString(r.UserData, userdata.TypeComment); s != w.rules[i].comment {
				return false, nil
			}
		}
	}
	sets, err := nc.GetSets(table)
	if err != nil {
		return false, fmt.Errorf("failed to list the maps of nftables %s: %w", nftutil.TableString(table), err)
	}
	maps := map[string]bool{}
	for _, s := range sets {
		maps[s.Name] = s.IsMap && s.Interval
	}
	if !maps[map4] || !maps[map6] {
		return false, nil
	}
	objs := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(nc, table, objs); err != nil {
		return false, err
	}
	return objs[counterName] != nil, nil
}

// Read returns the packets and bytes counted since the table was created,
// and the bytes of each source of the last Set since its counter was
// made; zeros when the table does not exist.
func (c *Counter) Read() (Counts, error) {
	c.mu.Lock()
	names := c.names
	c.mu.Unlock()
	nc, err := c.conn()
	if err != nil {
		return Counts{}, err
	}
	ok, err := nftutil.TableExists(nc, table)
	if err != nil || !ok {
		return Counts{}, err
	}
	objs := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(nc, table, objs); err != nil {
		return Counts{}, err
	}
	var out Counts
	if o := objs[counterName]; o != nil {
		out.Packets, out.Bytes = o.Packets, o.Bytes
	}
	for id, name := range names {
		if o := objs[id]; o != nil {
			if out.Peers == nil {
				out.Peers = map[string]uint64{}
			}
			out.Peers[name] = o.Bytes
		}
	}
	return out, nil
}

// Remove deletes the table, and the previous release's; no error if they do
// not exist.
func (c *Counter) Remove() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settled.Forget()
	nc, err := c.conn()
	if err != nil {
		return err
	}
	deleteTables(nc)
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("failed to delete nftables %s: %w", nftutil.TableString(table), err)
	}
	return nil
}

// deleteTables queues the deletion of the table and of the previous
// release's. Adding each before deleting it makes the deletion of an
// absent table a no-op within the one transaction.
func deleteTables(nc *nftables.Conn) {
	for _, tb := range []*nftables.Table{legacyTable, table} {
		nc.AddTable(tb)
		nc.DelTable(tb)
	}
}

// notExist recognizes ENOENT, which some of the nftables library's calls
// return only as text.
func notExist(err error) bool {
	return nftutil.NotFound(err) || strings.HasSuffix(err.Error(), unix.ENOENT.Error())
}
