package isolation

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/meshnet/mesh/internal/nftutil"
	"golang.org/x/sys/unix"
)

// Tables programs both tables with netlink. Safe for concurrent use.
type Tables struct {
	opts  []nftables.ConnOption
	netns int // its file descriptor; 0: the calling process's

	mu      sync.Mutex
	applied *Config // normalized; nil until the first Apply
	// intact: the config and ruleset generation at which Intact last
	// found the tables whole; forgotten on every change of this package's
	// own.
	intact nftutil.Settled
}

// New returns the tables of the calling process's network namespace.
func New() *Tables { return &Tables{} }

// NewInNetNS returns the tables of the network namespace whose file
// descriptor is fd.
func NewInNetNS(fd int) *Tables {
	return &Tables{opts: []nftables.ConnOption{nftables.WithNetNSFd(fd)}, netns: fd}
}

// setApplied records cfg (nil: none) as applied. Called with t.mu held.
func (t *Tables) setApplied(cfg *Config) {
	t.applied = cfg
	t.intact.Forget()
}

var (
	brTable   = &nftables.Table{Family: nftables.TableFamilyBridge, Name: TableName}
	inetTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
)

// Object names inside the tables.
const (
	setPods    = "pods"    // ifname . ether_addr . ipv4_addr: port, MAC, address of each pod
	setCluster = "cluster" // ipv4_addr interval: the cluster range
	setTrusted = "trusted" // ifname: where cluster-range sources may arrive
	setLegacy  = "legacy"  // ifname: ports of pods wired before port isolation
	setHairpin = "hairpin" // ifname . ifname: each pod port paired with itself
	// Dual-stack only (Config.ClusterRange6 set):
	setPods6    = "pods6"    // ifname . ether_addr . ipv6_addr: port, MAC, IPv6 address of each pod
	setPorts6   = "ports6"   // ifname . ether_addr: port and MAC of each pod with an IPv6 address
	setCluster6 = "cluster6" // ipv6_addr interval: the IPv6 cluster range
	chainPre    = "prerouting"
	chainFwd    = "forward"
	chainOut    = "output"
	chainDNAT   = "bridged-dnat"
)

var podKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)

var hairpinKey = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)

var (
	pod6Key  = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIP6Addr)
	port6Key = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr)
)

// ctStatusDstNAT is IPS_DST_NAT of the conntrack status: the connection's
// destination was translated (a Service's DNAT).
const ctStatusDstNAT = 1 << 5

// BridgedDNATMark is the packet mark bit the inet table's bridged-dnat chain sets
// on a pod's packet whose destination the host translated (a Service), for
// the bridge's forward chain, which cannot read conntrack. kube-proxy uses
// 0x4000 and 0x8000. A pod cannot set it: marks are cleared when a packet
// crosses from the pod's network namespace.
const BridgedDNATMark = 0x00100000

// hairpinElem pairs a port with itself: the frame a pod sends to a Service
// that DNATs it back to the pod leaves by the port it came in on.
func hairpinElem(port string) []byte { return append(ifname(port), ifname(port)...) }

func (t *Tables) conn() (*nftables.Conn, error) {
	c, err := nftables.New(t.opts...)
	if err != nil {
		return nil, fmt.Errorf("failed to open nftables netlink connection: %w", err)
	}
	return c, nil
}

// Apply replaces both tables with cfg in one transaction. Counters keep
// their values.
func (t *Tables) Apply(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.normalize()
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.conn()
	if err != nil {
		return err
	}
	old, err := counters(c)
	if err != nil {
		return err
	}
	for _, tb := range []*nftables.Table{brTable, inetTable} {
		c.AddTable(tb)
		c.DelTable(tb)
		c.AddTable(tb)
	}
	if err := program(c, cfg, old); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to program nftables tables bridge and inet %s: %w", TableName, err)
	}
	t.setApplied(&cfg)
	return nil
}

// Update brings the tables to cfg. When only ports came or went since the
// last Apply or Update, it adds and deletes their elements in one small
// transaction (what a CNI ADD or DEL costs); otherwise, or if that fails
// (the tables changed under it), it applies cfg whole.
func (t *Tables) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.normalize()
	t.mu.Lock()
	prev := t.applied
	t.mu.Unlock()
	if prev == nil || !samePortsKind(*prev, cfg) {
		return t.Apply(cfg)
	}
	if err := t.updatePorts(prev, cfg); err != nil {
		return t.Apply(cfg)
	}
	return nil
}

// samePortsKind reports whether a and b differ at most in their
// non-legacy ports.
func samePortsKind(a, b Config) bool {
	legacy := func(c Config) string {
		var s []string
		for _, p := range c.Ports {
			if p.Legacy {
				s = append(s, p.Name)
			}
		}
		return strings.Join(s, ",")
	}
	// A dual-stack config has more sets than updatePorts keeps; it is
	// applied whole.
	return a.Bridge == b.Bridge && a.PortPrefix == b.PortPrefix && a.ClusterRange == b.ClusterRange &&
		!a.ClusterRange6.IsValid() && !b.ClusterRange6.IsValid() &&
		slices.Equal(a.Trusted, b.Trusted) && legacy(a) == legacy(b)
}

// updatePorts moves the tables from prev, the config applied when the
// caller read it, to cfg, both normalized and differing at most in their
// non-legacy ports. It walks the two sorted port lists side by side, so an
// allocation costs one pass and the elements of the ports that changed,
// however many pods the node has.
func (t *Tables) updatePorts(prev *Config, cfg Config) error {
	var add, del, hadd, hdel []nftables.SetElement
	removed := func(p Port) {
		del = append(del, nftables.SetElement{Key: podElem(p.Name, p.MAC, p.Addr)})
		hdel = append(hdel, nftables.SetElement{Key: hairpinElem(p.Name)})
	}
	added := func(p Port) {
		add = append(add, nftables.SetElement{Key: podElem(p.Name, p.MAC, p.Addr)})
		hadd = append(hadd, nftables.SetElement{Key: hairpinElem(p.Name)})
	}
	old, cur := prev.Ports, cfg.Ports
	for len(old) > 0 || len(cur) > 0 {
		switch {
		case len(cur) == 0 || len(old) > 0 && old[0].Name < cur[0].Name:
			removed(old[0])
			old = old[1:]
		case len(old) == 0 || cur[0].Name < old[0].Name:
			added(cur[0])
			cur = cur[1:]
		default: // the same port
			if !bytes.Equal(old[0].MAC, cur[0].MAC) || old[0].Addr != cur[0].Addr {
				// Its element changes; its hairpin element stays.
				del = append(del, nftables.SetElement{Key: podElem(old[0].Name, old[0].MAC, old[0].Addr)})
				add = append(add, nftables.SetElement{Key: podElem(cur[0].Name, cur[0].MAC, cur[0].Addr)})
			}
			old, cur = old[1:], cur[1:]
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.applied != prev {
		return fmt.Errorf("tables changed meanwhile")
	}
	if len(add) == 0 && len(del) == 0 {
		t.setApplied(&cfg)
		return nil
	}
	c, err := t.conn()
	if err != nil {
		return err
	}
	pods := &nftables.Set{Table: brTable, Name: setPods, KeyType: podKey, Concatenation: true}
	if len(del) > 0 {
		if err := c.SetDeleteElements(pods, del); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(pods, add); err != nil {
			return err
		}
	}
	hairpin := &nftables.Set{Table: brTable, Name: setHairpin, KeyType: hairpinKey, Concatenation: true}
	if len(hdel) > 0 {
		if err := c.SetDeleteElements(hairpin, dedupElems(hdel)); err != nil {
			return err
		}
	}
	if len(hadd) > 0 {
		if err := c.SetAddElements(hairpin, dedupElems(hadd)); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to update set %s of %s: %w", setPods, nftutil.TableString(brTable), err)
	}
	t.setApplied(&cfg)
	return nil
}

// Applied returns the config last applied, and whether there is one.
func (t *Tables) Applied() (Config, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.applied == nil {
		return Config{}, false
	}
	return *t.applied, true
}

// Remove deletes both tables; no error if they do not exist.
func (t *Tables) Remove() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.conn()
	if err != nil {
		return err
	}
	for _, tb := range []*nftables.Table{brTable, inetTable} {
		c.AddTable(tb)
		c.DelTable(tb)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to delete nftables tables %s: %w", TableName, err)
	}
	t.setApplied(nil)
	return nil
}

// Counters returns the packets dropped, by counter name (see Counters).
func (t *Tables) Counters() (map[string]uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, err := t.conn()
	if err != nil {
		return nil, err
	}
	objs, err := counters(c)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for name, o := range objs {
		out[name] = o.Packets
	}
	return out, nil
}

// Intact reports whether the live tables still hold what Apply last put
// there: both tables, their chain, its rules and the pod set's elements.
// Anything else (a flushed ruleset, a deleted table, a flushed chain or
// set) is a difference the caller repairs by applying again.
func (t *Tables) Intact() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.applied == nil {
		return true, nil
	}
	// The daemon asks every few seconds: when no nftables transaction was
	// committed since the tables were last found whole, they still are,
	// and one netlink round trip says so (the comparison below dumps
	// every chain, intactLocked). The generation is read before the comparison, so a
	// change made during it is seen next time.
	return t.intact.Settle(t.netns, t.applied.String(), t.intactLocked)
}

// intactLocked compares the live tables with what was applied. Called with
// t.mu held and t.applied set.
func (t *Tables) intactLocked() (bool, error) {
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	want := []struct {
		tb    *nftables.Table
		chain string
		rules int
	}{
		{brTable, chainPre, len(bridgeRules(*t.applied, nil))},
		{brTable, chainFwd, len(forwardRules(*t.applied, nil, nil))},
		{inetTable, chainPre, len(inetRules(*t.applied, nil))},
		{inetTable, chainOut, len(outputRules(*t.applied))},
		{inetTable, chainDNAT, len(dnatRules(*t.applied))},
	}
	for _, w := range want {
		ok, err := nftutil.TableExists(c, w.tb)
		if err != nil || !ok {
			return false, err
		}
		rules, err := c.GetRules(w.tb, &nftables.Chain{Table: w.tb, Name: w.chain})
		if err != nil {
			if nftutil.NotFound(err) {
				return false, nil
			}
			return false, fmt.Errorf("failed to list the rules of chain %s of %s: %w", w.chain, nftutil.TableString(w.tb), err)
		}
		if len(rules) != w.rules {
			return false, nil
		}
	}
	elems, err := c.GetSetElements(&nftables.Set{Table: brTable, Name: setPods, KeyType: podKey})
	if err != nil {
		if nftutil.NotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("failed to list set %s of %s: %w", setPods, nftutil.TableString(brTable), err)
	}
	n := 0
	for _, p := range t.applied.Ports {
		if p.Addr.IsValid() {
			n++
		}
	}
	return len(elems) == n, nil
}

// counters reads the named counters of both tables.
func counters(c *nftables.Conn) (map[string]*nftables.CounterObj, error) {
	out := map[string]*nftables.CounterObj{}
	for _, tb := range []*nftables.Table{brTable, inetTable} {
		ok, err := nftutil.TableExists(c, tb)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		if err := nftutil.ReadCounters(c, tb, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func program(c *nftables.Conn, cfg Config, old map[string]*nftables.CounterObj) error {
	addCounter := func(tb *nftables.Table, name string) {
		o := &nftables.CounterObj{Table: tb, Name: name}
		if prev := old[name]; prev != nil {
			o.Packets, o.Bytes = prev.Packets, prev.Bytes
		}
		c.AddObj(o)
	}
	for _, name := range []string{CounterSpoofed, CounterIPv6, CounterHostConfig, CounterOther, CounterPodToPod} {
		addCounter(brTable, name)
	}
	addCounter(inetTable, CounterUnderlay)

	// Bridge: every frame entering a port of the pods' bridge.
	pods := &nftables.Set{Table: brTable, Name: setPods, KeyType: podKey, Concatenation: true}
	var elems []nftables.SetElement
	for _, p := range cfg.Ports {
		if p.Addr.IsValid() { // not an IPv6-only pod
			elems = append(elems, nftables.SetElement{Key: podElem(p.Name, p.MAC, p.Addr)})
		}
	}
	if err := c.AddSet(pods, elems); err != nil {
		return fmt.Errorf("failed to add set %s: %w", setPods, err)
	}
	accept := nftables.ChainPolicyAccept
	br := c.AddChain(&nftables.Chain{Table: brTable, Name: chainPre, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200), Policy: &accept})
	brSets := map[string]*nftables.Set{setPods: pods}
	if cfg.ClusterRange6.IsValid() {
		pods6 := &nftables.Set{Table: brTable, Name: setPods6, KeyType: pod6Key, Concatenation: true}
		ports6 := &nftables.Set{Table: brTable, Name: setPorts6, KeyType: port6Key, Concatenation: true}
		var e6, p6 []nftables.SetElement
		for _, p := range cfg.Ports {
			if p.Addr6.IsValid() {
				e6 = append(e6, nftables.SetElement{Key: pod6Elem(p.Name, p.MAC, p.Addr6)})
				p6 = append(p6, nftables.SetElement{Key: port6Elem(p.Name, p.MAC)})
			}
		}
		if err := c.AddSet(pods6, e6); err != nil {
			return fmt.Errorf("failed to add set %s: %w", setPods6, err)
		}
		if err := c.AddSet(ports6, dedupElems(p6)); err != nil {
			return fmt.Errorf("failed to add set %s: %w", setPorts6, err)
		}
		brSets[setPods6], brSets[setPorts6] = pods6, ports6
	}
	for _, r := range bridgeRules(cfg, brSets) {
		c.AddRule(&nftables.Rule{Table: brTable, Chain: br, Exprs: r})
	}
	legacy := &nftables.Set{Table: brTable, Name: setLegacy, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	var lelems []nftables.SetElement
	for _, p := range cfg.Ports {
		if p.Legacy {
			lelems = append(lelems, nftables.SetElement{Key: ifname(p.Name)})
		}
	}
	if err := c.AddSet(legacy, lelems); err != nil {
		return fmt.Errorf("failed to add set %s: %w", setLegacy, err)
	}
	hairpin := &nftables.Set{Table: brTable, Name: setHairpin, KeyType: hairpinKey, Concatenation: true}
	var helems []nftables.SetElement
	for _, p := range cfg.Ports {
		helems = append(helems, nftables.SetElement{Key: hairpinElem(p.Name)})
	}
	if err := c.AddSet(hairpin, dedupElems(helems)); err != nil {
		return fmt.Errorf("failed to add set %s: %w", setHairpin, err)
	}
	fwd := c.AddChain(&nftables.Chain{Table: brTable, Name: chainFwd, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(-200), Policy: &accept})
	for _, r := range forwardRules(cfg, legacy, hairpin) {
		c.AddRule(&nftables.Rule{Table: brTable, Chain: fwd, Exprs: r})
	}

	// inet: packets with a cluster-range source, before conntrack.
	cluster := &nftables.Set{Table: inetTable, Name: setCluster, KeyType: nftables.TypeIPAddr, Interval: true}
	var celems []nftables.SetElement
	if cfg.ClusterRange.IsValid() {
		lo := cfg.ClusterRange.Masked().Addr().As4()
		celems = append(celems, nftables.SetElement{Key: lo[:]})
		hi := binary.BigEndian.Uint32(lo[:]) | (^uint32(0) >> cfg.ClusterRange.Bits())
		if hi != ^uint32(0) {
			celems = append(celems, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, hi+1), IntervalEnd: true})
		}
	}
	if err := c.AddSet(cluster, celems); err != nil {
		return fmt.Errorf("failed to add set %s: %w", setCluster, err)
	}
	inSets := map[string]*nftables.Set{setCluster: cluster}
	if r := cfg.ClusterRange6; r.IsValid() {
		cluster6 := &nftables.Set{Table: inetTable, Name: setCluster6, KeyType: nftables.TypeIP6Addr, Interval: true}
		lo := r.Masked().Addr()
		elems := []nftables.SetElement{{Key: lo.AsSlice()}}
		if end, ok := afterPrefix(r); ok {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
		if err := c.AddSet(cluster6, elems); err != nil {
			return fmt.Errorf("failed to add set %s: %w", setCluster6, err)
		}
		inSets[setCluster6] = cluster6
	}
	trusted := &nftables.Set{Table: inetTable, Name: setTrusted, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	var telems []nftables.SetElement
	for _, n := range append([]string{cfg.Bridge, "lo"}, cfg.Trusted...) {
		telems = append(telems, nftables.SetElement{Key: ifname(n)})
	}
	if err := c.AddSet(trusted, dedupElems(telems)); err != nil {
		return fmt.Errorf("failed to add set %s: %w", setTrusted, err)
	}
	raw := nftables.ChainPriorityRaw
	in := c.AddChain(&nftables.Chain{Table: inetTable, Name: chainPre, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: raw, Policy: &accept})
	inSets[setTrusted] = trusted
	for _, r := range inetRules(cfg, inSets) {
		c.AddRule(&nftables.Rule{Table: inetTable, Chain: in, Exprs: r})
	}
	out := c.AddChain(&nftables.Chain{Table: inetTable, Name: chainOut, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for _, r := range outputRules(cfg) {
		c.AddRule(&nftables.Rule{Table: inetTable, Chain: out, Exprs: r})
	}
	// After kube-proxy's DNAT (priority dstnat).
	dnat := c.AddChain(&nftables.Chain{Table: inetTable, Name: chainDNAT, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest + 10), Policy: &accept})
	for _, r := range dnatRules(cfg) {
		c.AddRule(&nftables.Rule{Table: inetTable, Chain: dnat, Exprs: r})
	}
	return nil
}

// dnatRules is the inet bridged-dnat chain, after the host's DNAT: a packet from
// the bridge (br_netfilter hands bridged packets to the IPv4 hooks with the
// bridge, not the port, as input device) whose connection the host DNATed
// is marked for the bridge's forward chain (see forwardRules). Routed
// packets get the mark too; only the bridge's forward chain reads it.
//
//	iifname BRIDGE ct status dnat meta mark set mark | BridgedDNATMark
func dnatRules(cfg Config) [][]expr.Any {
	return [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ifname(cfg.Bridge)},
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDstNAT),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^uint32(BridgedDNATMark)),
			Xor:  binaryutil.NativeEndian.PutUint32(BridgedDNATMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}}
}

// outputRules is the inet output chain: the host sends no ICMP redirects
// to pods. Pod-to-pod traffic of one node enters and leaves the bridge, so
// the kernel would tell the sender to go straight to the other pod's MAC:
// past the host's forward hook (NetworkPolicy), and into the pod-to-pod
// drop of the bridge table.
//
//	oifname BRIDGE icmp type redirect drop
//
// and in a dual-stack mesh the same for ICMPv6:
//
//	oifname BRIDGE icmpv6 type nd-redirect drop
func outputRules(cfg Config) [][]expr.Any {
	rules := [][]expr.Any{nftutil.RedirectDrop(cfg.Bridge, false)}
	if cfg.ClusterRange6.IsValid() {
		rules = append(rules, nftutil.RedirectDrop(cfg.Bridge, true))
	}
	return rules
}

func dedupElems(in []nftables.SetElement) []nftables.SetElement {
	seen := map[string]bool{}
	var out []nftables.SetElement
	for _, e := range in {
		if !seen[string(e.Key)] {
			seen[string(e.Key)] = true
			out = append(out, e)
		}
	}
	return out
}

// ifname is an interface name as nftables keys it.
func ifname(n string) []byte { return nftutil.IfName(n) }

// pod6Elem is the key of a pod's IPv6 address in setPods6.
func pod6Elem(name string, mac []byte, a interface{ As16() [16]byte }) []byte {
	ip := a.As16()
	return append(port6Elem(name, mac), ip[:]...)
}

// port6Elem is the key of a pod's port in setPorts6.
func port6Elem(name string, mac []byte) []byte {
	key := make([]byte, 0, 40)
	key = append(key, ifname(name)...)
	key = append(key, mac...)
	return append(key, 0, 0) // ether_addr is padded to 8 bytes
}

// afterPrefix is the first address after p, and false when p reaches the
// end of its address space.
func afterPrefix(p netip.Prefix) (netip.Addr, bool) {
	b := p.Masked().Addr().As16()
	for i := p.Bits(); i < 128; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	last := netip.AddrFrom16(b)
	next := last.Next()
	return next, next.IsValid()
}

func podElem(name string, mac []byte, a interface{ As4() [4]byte }) []byte {
	key := make([]byte, 0, 28)
	key = append(key, ifname(name)...)
	key = append(key, mac...)
	key = append(key, 0, 0) // ether_addr is padded to 8 bytes
	ip := a.As4()
	return append(key, ip[:]...)
}

// Registers: NFT_REG_1 (16 bytes) overlaps NFT_REG32_00..03; a
// concatenation continues in the 4-byte registers after it.
const (
	reg1     = 1
	reg32_04 = 12 // after a 16-byte ifname in NFT_REG_1
	reg32_06 = 14 // after an 8-byte (padded) MAC
)

// Ethernet and ARP numbers.
const (
	ethIP   = 0x0800
	ethARP  = 0x0806
	ethIPv6 = 0x86dd
)

// ICMPv6 types (RFC 4861).
const (
	icmp6RouterAdvert = 134
	icmp6NeighSolicit = 135
	icmp6NeighAdvert  = 136
)

func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

func counterDrop(name string) []expr.Any {
	return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

// lookup appends a set lookup, or a placeholder when only the rule count
// is wanted (set nil).
func lookup(s *nftables.Set, invert bool) expr.Any {
	if s == nil {
		return &expr.Lookup{SourceRegister: reg1, Invert: invert}
	}
	return &expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID, Invert: invert}
}

// bridgeRules is the bridge chain:
//
//	iifname != "PREFIX*" accept
//	ether type ip iifname . ether saddr . ip saddr != @pods counter "spoofed" drop
//	ether type ip ip protocol udp udp sport 67 counter "host-config" drop
//	ether type ip accept
//	ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . ether saddr . arp saddr ip @pods iifname . arp saddr ether . arp saddr ip @pods accept
//	ether type arp counter "spoofed" drop
//	[dual-stack: the rules of bridgeRules6]
//	ether type ip6 counter "ipv6" drop
//	counter "other" drop
//
// sets holds the sets by name, nil when only the rule count is wanted.
func bridgeRules(cfg Config, sets map[string]*nftables.Set) [][]expr.Any {
	pods := sets[setPods]
	iifname := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1}
	etherSaddr := &expr.Payload{DestRegister: reg32_04, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	arpSpa := &expr.Payload{DestRegister: reg32_06, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4}
	var rules [][]expr.Any
	// Ports are told by their name: not every kernel has "meta ibrname"
	// (nft_meta_bridge), and the bridge holds only pods' veths.
	rules = append(rules, []expr.Any{
		iifname,
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte(cfg.PortPrefix)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	})
	r := append(etherType(ethIP), iifname, etherSaddr,
		&expr.Payload{DestRegister: reg32_06, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		lookup(pods, true))
	rules = append(rules, append(r, counterDrop(CounterSpoofed)...))
	r = append(etherType(ethIP),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.BigEndian.PutUint16(67)})
	rules = append(rules, append(r, counterDrop(CounterHostConfig)...))
	rules = append(rules, append(etherType(ethIP), &expr.Verdict{Kind: expr.VerdictAccept}))
	r = append(etherType(ethARP),
		// htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0, 1, 0x08, 0x00, 6, 4}},
		// the frame's source and the ARP sender are both the pod's
		iifname, etherSaddr, arpSpa, lookup(pods, false),
		iifname,
		&expr.Payload{DestRegister: reg32_04, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
		arpSpa, lookup(pods, false),
		&expr.Verdict{Kind: expr.VerdictAccept})
	rules = append(rules, r)
	rules = append(rules, append(etherType(ethARP), counterDrop(CounterSpoofed)...))
	if cfg.ClusterRange6.IsValid() {
		rules = append(rules, bridgeRules6(sets)...)
	}
	rules = append(rules, append(etherType(ethIPv6), counterDrop(CounterIPv6)...))
	rules = append(rules, counterDrop(CounterOther))
	return rules
}

// bridgeRules6 admits a dual-stack pod's IPv6 on its port: its own source
// address with its own MAC, and the neighbour discovery that resolving its
// gateway and being resolved needs, nothing that configures the host or
// other pods:
//
//	ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-router-advert counter "ipv6" drop
//	ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-redirect counter "ipv6" drop
//	ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-neighbor-advert iifname . ether saddr . icmpv6 nd target @pods6 accept
//	ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-neighbor-advert counter "spoofed" drop
//	ether type ip6 iifname . ether saddr . ip6 saddr @pods6 accept
//	ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-neighbor-solicit ip6 saddr :: iifname . ether saddr @ports6 accept
//	ether type ip6 meta l4proto ipv6-icmp icmpv6 type nd-neighbor-solicit ip6 saddr fe80::/10 iifname . ether saddr @ports6 accept
//	ether type ip6 ip6 saddr != fe80::/10 ip6 saddr != :: counter "spoofed" drop
//
// An advertisement may name only the pod's own address as its target
// (whatever its source), so a pod cannot take over the gateway's or
// another pod's address in the host's neighbour cache, as ARP spoofing
// would in IPv4. A solicitation from the pod's own address passes with its
// other traffic; from the unspecified address (duplicate address
// detection) or a link-local one, only with the port's MAC. Other
// link-local traffic (router solicitations, MLD) falls to the "ipv6" drop
// after these rules.
func bridgeRules6(sets map[string]*nftables.Set) [][]expr.Any {
	iifname := &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1}
	etherSaddr := &expr.Payload{DestRegister: reg32_04, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}
	icmp6 := func(typ byte) []expr.Any {
		return append(etherType(ethIPv6),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMPV6}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{typ}})
	}
	saddrIs := func(mask, want []byte) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 16, Mask: mask, Xor: make([]byte, 16)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: want},
		}
	}
	saddrNot := func(mask, want []byte) []expr.Any {
		r := saddrIs(mask, want)
		r[2] = &expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: want}
		return r
	}
	all := bytes16(0xff)
	linkLocalMask := append([]byte{0xff, 0xc0}, make([]byte, 14)...)
	linkLocal := append([]byte{0xfe, 0x80}, make([]byte, 14)...)
	unspecified := make([]byte, 16)
	var rules [][]expr.Any
	rules = append(rules, append(icmp6(icmp6RouterAdvert), counterDrop(CounterIPv6)...))
	rules = append(rules, append(icmp6(nftutil.ICMPv6Redirect), counterDrop(CounterIPv6)...))
	rules = append(rules, append(icmp6(icmp6NeighAdvert), iifname, etherSaddr,
		&expr.Payload{DestRegister: reg32_06, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 16},
		lookup(sets[setPods6], false), &expr.Verdict{Kind: expr.VerdictAccept}))
	rules = append(rules, append(icmp6(icmp6NeighAdvert), counterDrop(CounterSpoofed)...))
	rules = append(rules, append(etherType(ethIPv6), iifname, etherSaddr,
		&expr.Payload{DestRegister: reg32_06, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		lookup(sets[setPods6], false), &expr.Verdict{Kind: expr.VerdictAccept}))
	for _, src := range [][2][]byte{{all, unspecified}, {linkLocalMask, linkLocal}} {
		r := append(icmp6(icmp6NeighSolicit), saddrIs(src[0], src[1])...)
		r = append(r, iifname, etherSaddr, lookup(sets[setPorts6], false), &expr.Verdict{Kind: expr.VerdictAccept})
		rules = append(rules, r)
	}
	r := append(etherType(ethIPv6), saddrNot(linkLocalMask, linkLocal)...)
	r = append(r, saddrNot(all, unspecified)...)
	rules = append(rules, append(r, counterDrop(CounterSpoofed)...))
	return rules
}

func bytes16(b byte) []byte {
	out := make([]byte, 16)
	for i := range out {
		out[i] = b
	}
	return out
}

// forwardRules is the bridge's forward chain: pods reach each other only
// through the host (their gateway), where NetworkPolicy applies; a frame
// bridged from one pod port to another (addressed to a pod's MAC, or
// flooded) is dropped, except from and to the ports of legacy pods (see
// Port.Legacy: their peers learnt the direct way from redirects, too). A
// frame that leaves by the port it came in on is a hairpin (a pod reaching
// itself through a Service, DNATed on the bridge with br_netfilter) and
// passes: it reaches no other pod. A frame of a connection the host
// DNATed passes too: a pod's packet to a Service whose endpoint is another
// pod of this node is translated by br_netfilter on the bridge and then
// bridged straight to that pod's port; the pod sent it to its gateway, not
// past it, and br_netfilter still hands it to the host's IPv4 forward hook,
// where NetworkPolicy judges it. (With bridge-nf-call-iptables=0 nothing
// is translated on the bridge: the packet is routed.) The bridge family has
// no conntrack without nf_conntrack_bridge, so the inet table's bridged-dnat chain
// marks such packets (see dnatRules).
//
//	iifname . oifname @hairpin accept
//	meta mark & BridgedDNATMark == BridgedDNATMark accept
//	iifname "PREFIX*" oifname "PREFIX*" iifname != @legacy oifname != @legacy counter "pod-to-pod" drop
func forwardRules(cfg Config, legacy, hairpin *nftables.Set) [][]expr.Any {
	return [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg32_04},
		lookup(hairpin, false),
		&expr.Verdict{Kind: expr.VerdictAccept},
	}, {
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(BridgedDNATMark),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}, append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte(cfg.PortPrefix)},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte(cfg.PortPrefix)},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		lookup(legacy, true),
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg1},
		lookup(legacy, true),
	}, counterDrop(CounterPodToPod)...)}
}

// inetRules is the inet chain:
//
//	meta nfproto ipv4 ip saddr @cluster iifname != @trusted counter "underlay-spoofed" drop
//	meta nfproto ipv6 ip6 saddr @cluster6 iifname != @trusted counter "underlay-spoofed" drop   # dual-stack
func inetRules(cfg Config, sets map[string]*nftables.Set) [][]expr.Any {
	var rules [][]expr.Any
	if cfg.ClusterRange.IsValid() {
		rules = append(rules, append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			lookup(sets[setCluster], false),
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			lookup(sets[setTrusted], true),
		}, counterDrop(CounterUnderlay)...))
	}
	if cfg.ClusterRange6.IsValid() {
		rules = append(rules, append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
			lookup(sets[setCluster6], false),
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			lookup(sets[setTrusted], true),
		}, counterDrop(CounterUnderlay)...))
	}
	return rules
}
