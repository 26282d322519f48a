// Package nat keeps mesh's address translation: one nftables table,
// "ip mesh-nat", with one postrouting chain, behind an idempotent Set.
//
// Two kinds of traffic are translated:
//
//   - Outbound NAT (Config.Masquerade): a pod's packet to a destination
//     outside the cluster range is masqueraded to the address of the
//     interface it leaves by (the node's underlay address), so pods reach
//     the node network and beyond without the underlay knowing the pod
//     ranges. Destinations in the cluster range (other pods, and Services,
//     which kube-proxy has already translated to a pod address in
//     prerouting) and those listed in Config.NoMasquerade keep the pod's
//     source address.
//   - Overlay source (Config.OverlayIP): a packet that enters the WireGuard
//     device with a source outside the cluster range (a host process bound
//     to the node's address, a packet forwarded from the underlay such as
//     NodePort traffic) gets the node's overlay IP as source. The receiving
//     peer's WireGuard drops every packet whose source is not in the
//     sender's AllowedIPs (its pod ranges), so without this such traffic,
//     or its replies, would be lost. The same holds for a pod's packet that
//     kube-proxy marked for masquerade (KubeProxyMasqueradeMark: a pod
//     reaching a NodePort of its own node whose endpoint is on another
//     node): kube-proxy's masquerade would give it the node's underlay
//     address, so it gets the overlay IP instead.
//   - Pods to other nodes (Config.Nodes): a pod's packet to another mesh
//     node's own address is masqueraded even where outbound NAT is off or
//     exempts the node network. That node answers the pod address through
//     WireGuard, with its own address as source, which the pod's node
//     would drop for the same reason; masqueraded, the answer goes back
//     over the underlay.
//
// The chain hooks postrouting at priority srcnat-10, ahead of kube-proxy's
// masquerade (srcnat). The kernel binds a connection's source NAT in the
// first chain that translates it, so the overlay rule wins over kube-proxy's
// masquerade, which would pick the node's underlay address for the
// WireGuard device (it has no address of its own).
//
// In a dual-stack mesh (Config.ClusterRange6) a second table, "ip6
// mesh-nat", does the same for IPv6 pods: outbound NAT (NAT66, to the
// address of the interface the packet leaves by, as unique-local pod
// addresses are not routable outside) and the overlay source for traffic
// entering the WireGuard device from outside the IPv6 cluster range. Its
// rules and comments are those of the IPv4 table with ip6 for ip.
//
// The tables are mesh's alone: Set replaces a table in one transaction,
// Remove deletes both, and nothing else in them is touched by anyone.
package nat

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/meshnet/mesh/internal/nftutil"
	"golang.org/x/sys/unix"
)

// TableName is the name of mesh's NAT table (family ip).
const TableName = "mesh-nat"

const chainName = "postrouting"

// KubeProxyMasqueradeMark is the packet mark kube-proxy sets on a
// connection it masquerades (its default masqueradeBit 14, in both its
// iptables and nftables modes).
const KubeProxyMasqueradeMark = 0x4000

// MaxNoMasquerade bounds Config.NoMasquerade: one rule each, evaluated for
// every new outbound connection.
const MaxNoMasquerade = 64

// priority is srcnat - 10: see the package comment.
var priority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource - 10)

var (
	table  = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	table6 = &nftables.Table{Family: nftables.TableFamilyIPv6, Name: TableName}
)

// Config is the desired translation.
type Config struct {
	// ClusterRange holds every pod address of the mesh.
	ClusterRange netip.Prefix
	// Masquerade turns on outbound NAT for pods.
	Masquerade bool
	// NoMasquerade are destinations never masqueraded (networks that route
	// pod addresses themselves).
	NoMasquerade []netip.Prefix
	// OverlayDevice is the WireGuard device.
	OverlayDevice string
	// InnerDevice is the end-to-end device (fastdp.Inner), "" for none:
	// traffic entering it gets the overlay source as OverlayDevice's
	// does, as the far end's inner layer drops sources outside this
	// node's ranges just the same.
	InnerDevice string
	// Nodes are the underlay addresses of the other nodes of the mesh:
	// the IPv4 ones for IPv4 pods, the IPv6 ones (an IPv6 underlay) for
	// IPv6 pods.
	Nodes []netip.Addr
	// OverlayIP is the node's overlay address, the source given to traffic
	// entering OverlayDevice from outside the cluster range; the zero value
	// (a node owning no range yet) leaves such traffic alone.
	OverlayIP netip.Addr
	// ClusterRange6 and OverlayIP6 are the IPv6 cluster range of a
	// dual-stack mesh and the node's IPv6 overlay address: with them the
	// ip6 table masquerades IPv6 pods (with Masquerade) and gives the
	// overlay source to IPv6 traffic entering OverlayDevice. The zero
	// values (an IPv4-only mesh) leave no ip6 table.
	ClusterRange6 netip.Prefix
	OverlayIP6    netip.Addr
}

// Validate reports whether Set would accept c.
func (c *Config) Validate() error {
	if c == nil {
		return errors.New("invalid NAT config: nil")
	}
	// An IPv6-only mesh has no IPv4 range: ClusterRange6 alone.
	if v6only := !c.ClusterRange.IsValid() && c.ClusterRange6.IsValid(); !v6only && (!c.ClusterRange.IsValid() || !c.ClusterRange.Addr().Is4() || c.ClusterRange != c.ClusterRange.Masked()) {
		return fmt.Errorf("invalid NAT config: cluster range %s is not a masked IPv4 prefix", c.ClusterRange)
	}
	if len(c.NoMasquerade) > MaxNoMasquerade {
		return fmt.Errorf("invalid NAT config: %d no-masquerade CIDRs, at most %d", len(c.NoMasquerade), MaxNoMasquerade)
	}
	for _, p := range c.NoMasquerade {
		if !p.IsValid() || p.Addr().Is4In6() || p != p.Masked() {
			return fmt.Errorf("invalid NAT config: no-masquerade CIDR %s is not a masked IPv4 or IPv6 prefix", p)
		}
	}
	for _, a := range c.Nodes {
		if !a.IsValid() || a.Is4In6() {
			return fmt.Errorf("invalid NAT config: node address %s is neither IPv4 nor IPv6", a)
		}
	}
	if r := c.ClusterRange6; r.IsValid() && (!r.Addr().Is6() || r.Addr().Is4In6() || r != r.Masked()) {
		return fmt.Errorf("invalid NAT config: IPv6 cluster range %s is not a masked IPv6 prefix", r)
	}
	if c.InnerDevice != "" && (len(c.InnerDevice) > 15 || c.InnerDevice == c.OverlayDevice) {
		return fmt.Errorf("invalid NAT config: end-to-end device %q is not an interface name of its own", c.InnerDevice)
	}
	if a := c.OverlayIP6; a.IsValid() {
		if !c.ClusterRange6.Contains(a) {
			return fmt.Errorf("invalid NAT config: IPv6 overlay IP %s is outside the IPv6 cluster range %s", a, c.ClusterRange6)
		}
		if c.OverlayDevice == "" || len(c.OverlayDevice) > 15 {
			return fmt.Errorf("invalid NAT config: overlay device %q is not an interface name", c.OverlayDevice)
		}
	}
	if c.OverlayIP.IsValid() {
		if !c.ClusterRange.Contains(c.OverlayIP) {
			return fmt.Errorf("invalid NAT config: overlay IP %s is outside the cluster range %s", c.OverlayIP, c.ClusterRange)
		}
		// IFNAMSIZ is 16 including the terminating NUL.
		if c.OverlayDevice == "" || len(c.OverlayDevice) > 15 {
			return fmt.Errorf("invalid NAT config: overlay device %q is not an interface name", c.OverlayDevice)
		}
	}
	return nil
}

// rule is one rule of the chain. Its comment describes it completely, so
// comparing the comments in the kernel with the desired ones tells whether
// the table is as wanted.
type rule struct {
	comment string
	exprs   []expr.Any
}

// rules computes the IPv4 table's chain; none means no table is needed.
func (c *Config) rules() []rule { return c.familyRules(false) }

// rules6 computes the ip6 table's chain: the IPv6 counterpart of rules,
// the other nodes' addresses being their IPv6 ones (an IPv6 underlay);
// none without an IPv6 cluster range.
func (c *Config) rules6() []rule { return c.familyRules(true) }

// familyRules computes one family's chain (IPv6 with v6). The two differ
// only in their cluster range, overlay address, header offsets and the
// word nft writes for the family ("ip", "ip6").
func (c *Config) familyRules(v6 bool) []rule {
	cr, overlay, word, nfproto := c.ClusterRange, c.OverlayIP, "ip", uint32(unix.NFPROTO_IPV4)
	saddr, daddr, alen := uint32(saddrOff), uint32(daddrOff), uint32(4)
	if v6 {
		cr, overlay, word, nfproto = c.ClusterRange6, c.OverlayIP6, "ip6", unix.NFPROTO_IPV6
		saddr, daddr, alen = saddrOff6, daddrOff6, 16
	}
	if !cr.IsValid() || cr.Addr().Is6() != v6 {
		return nil // the other family's range, or none: see the other table
	}
	var out []rule
	if overlay.IsValid() {
		snat := []expr.Any{
			&expr.Immediate{Register: 1, Data: overlay.AsSlice()},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: nfproto, RegAddrMin: 1, RegAddrMax: 1},
		}
		for _, dev := range []string{c.OverlayDevice, c.InnerDevice} {
			if dev == "" {
				continue
			}
			out = append(out, rule{
				comment: fmt.Sprintf("oifname %s %s saddr != %s snat to %s", dev, word, cr, overlay),
				exprs:   slices.Concat(oifname(dev), prefixMatch(saddr, cr, false), snat),
			}, rule{
				comment: fmt.Sprintf("oifname %s meta mark & %#x == %#x snat to %s", dev, KubeProxyMasqueradeMark, KubeProxyMasqueradeMark, overlay),
				exprs: slices.Concat(oifname(dev),
					[]expr.Any{
						&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
						&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
							Mask: binaryutil.NativeEndian.PutUint32(KubeProxyMasqueradeMark),
							Xor:  binaryutil.NativeEndian.PutUint32(0)},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(KubeProxyMasqueradeMark)},
					}, snat),
			})
		}
	}
	if nodes := c.nodes(v6); len(nodes) > 0 {
		out = append(out, rule{
			comment: fmt.Sprintf("%s saddr %s %s daddr @%s masquerade (%d nodes, %x)", word, cr, word, nodesSet, len(nodes), nodesDigest(nodes)),
			exprs: slices.Concat(prefixMatch(saddr, cr, true), []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: alen},
				&expr.Lookup{SourceRegister: 1, SetName: nodesSet},
				&expr.Masq{},
			}),
		})
	}
	if !c.Masquerade {
		return out
	}
	ret := []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	out = append(out, rule{
		comment: fmt.Sprintf("%s daddr %s return", word, cr),
		exprs:   slices.Concat(prefixMatch(daddr, cr, true), ret),
	})
	for _, p := range c.NoMasquerade {
		if p.Addr().Is6() != v6 {
			continue
		}
		out = append(out, rule{
			comment: fmt.Sprintf("%s daddr %s return (no-masquerade)", word, p),
			exprs:   slices.Concat(prefixMatch(daddr, p, true), ret),
		})
	}
	return append(out, rule{
		comment: fmt.Sprintf("%s saddr %s masquerade", word, cr),
		exprs:   slices.Concat(prefixMatch(saddr, cr, true), []expr.Any{&expr.Masq{}}),
	})
}

// Offsets of the IPv6 header's addresses.
const (
	saddrOff6 = 8
	daddrOff6 = 24
)

// nodesSet is the set of the other nodes' addresses.
const nodesSet = "nodes"

// nodes returns the Nodes of one family (IPv6 with v6), sorted and
// without duplicates.
func (c *Config) nodes(v6 bool) []netip.Addr {
	ns := slices.DeleteFunc(slices.Clone(c.Nodes), func(a netip.Addr) bool { return a.Is6() != v6 })
	slices.SortFunc(ns, netip.Addr.Compare)
	return slices.Compact(ns)
}

// nodesDigest puts the content of the nodes set into its rule's comment.
func nodesDigest(nodes []netip.Addr) []byte {
	h := sha256.New()
	for _, a := range nodes {
		h.Write(a.AsSlice())
	}
	return h.Sum(nil)[:8]
}

const (
	saddrOff = 12
	daddrOff = 16
)

// prefixMatch matches the address at off of the network header against
// p (eq) or its complement; the family (IPv4 or IPv6) and so the length
// compared are p's.
func prefixMatch(off uint32, p netip.Prefix, eq bool) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	mask := make([]byte, n)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	op := expr.CmpOpEq
	if !eq {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func oifname(name string) []expr.Any {
	b := make([]byte, 16)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// NAT programs the table.
type NAT struct {
	opts    []nftables.ConnOption
	netns   int             // its file descriptor; 0: the calling process's
	mu      sync.Mutex      // serializes Set and Remove, guards settled
	settled nftutil.Settled // the config the tables were last found in
}

// New returns a NAT for the network namespace of the calling process.
func New() *NAT { return &NAT{} }

// NewInNetNS returns a NAT for the network namespace whose file descriptor
// is fd.
func NewInNetNS(fd int) *NAT {
	return &NAT{opts: []nftables.ConnOption{nftables.WithNetNSFd(fd)}, netns: fd}
}

func (n *NAT) conn() (*nftables.Conn, error) {
	c, err := nftables.New(n.opts...)
	if err != nil {
		return nil, fmt.Errorf("failed to open nftables netlink connection: %w", err)
	}
	return c, nil
}

// Set makes the table match cfg. When cfg is the config the tables were
// last found in and no nftables transaction was committed since (one
// netlink round trip, nftutil.Settled), it does nothing; otherwise it reads
// the chains' rules (a netlink dump each) and writes nothing when they are
// as wanted. So calling it every few seconds costs little and restores a
// table someone deleted or changed. A change replaces the whole table in
// one transaction: packets see the old rules or the new ones, never none.
// A config that needs no rule removes the table.
func (n *NAT) Set(cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	_, err := n.settled.Settle(n.netns, fmt.Sprintf("%+v", *cfg), func() (bool, error) { return true, n.set(cfg) })
	return err
}

func (n *NAT) set(cfg *Config) error {
	c, err := n.conn()
	if err != nil {
		return err
	}
	var nodes4, nodes6 []netip.Addr
	if cfg.ClusterRange.IsValid() {
		nodes4 = cfg.nodes(false)
	}
	if cfg.ClusterRange6.IsValid() {
		nodes6 = cfg.nodes(true)
	}
	if err := n.setTable(c, table, cfg.rules(), nodes4); err != nil {
		return err
	}
	return n.setTable(c, table6, cfg.rules6(), nodes6)
}

// setTable makes tb's chain hold want, with the set of nodes when there
// are any; no rule removes the table.
func (n *NAT) setTable(c *nftables.Conn, tb *nftables.Table, want []rule, nodes []netip.Addr) error {
	have, err := currentComments(c, tb)
	if err != nil {
		return err
	}
	if len(want) == 0 {
		if have == nil {
			return nil
		}
		return n.remove(c, tb)
	}
	if slices.EqualFunc(have, want, func(h string, w rule) bool { return h == w.comment }) {
		return nil
	}
	c.AddTable(tb)
	c.DelTable(tb)
	c.AddTable(tb)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Table: tb, Name: chainName, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: priority, Policy: &accept})
	if len(nodes) > 0 {
		keyType := nftables.TypeIPAddr
		if tb.Family == nftables.TableFamilyIPv6 {
			keyType = nftables.TypeIP6Addr
		}
		set := &nftables.Set{Table: tb, Name: nodesSet, KeyType: keyType}
		var elems []nftables.SetElement
		for _, a := range nodes {
			elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
		}
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("failed to add set %s of %s: %w", nodesSet, nftutil.TableString(tb), err)
		}
		// In chunks: one netlink message holds some thousand elements.
		for chunk := range slices.Chunk(elems, 512) {
			if err := c.SetAddElements(set, chunk); err != nil {
				return fmt.Errorf("failed to add elements to set %s of %s: %w", nodesSet, nftutil.TableString(tb), err)
			}
		}
		for i := range want {
			for _, e := range want[i].exprs {
				if l, ok := e.(*expr.Lookup); ok {
					l.SetID = set.ID
				}
			}
		}
	}
	for _, r := range want {
		c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to program nftables %s: %w", nftutil.TableString(tb), err)
	}
	return nil
}

// currentComments lists the comments of the chain's rules in order; nil
// when the table or chain does not exist, or the chain is not as Set makes
// it. An empty chain gives an empty, non-nil list.
func currentComments(c *nftables.Conn, tb *nftables.Table) ([]string, error) {
	ch, err := c.ListChain(tb, chainName)
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("failed to look up chain %s of %s: %w", chainName, nftutil.TableString(tb), err)
	}
	if ch == nil || ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookPostrouting ||
		ch.Priority == nil || *ch.Priority != *priority || ch.Type != nftables.ChainTypeNAT {
		return nil, nil
	}
	rs, err := c.GetRules(tb, ch)
	if err != nil {
		if isNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("failed to list the rules of %s: %w", nftutil.TableString(tb), err)
	}
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		out = append(out, s)
	}
	return out, nil
}

// Remove deletes both tables; no error if they do not exist.
func (n *NAT) Remove() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.settled.Forget()
	c, err := n.conn()
	if err != nil {
		return err
	}
	for _, tb := range []*nftables.Table{table, table6} {
		if err := n.remove(c, tb); err != nil {
			return err
		}
	}
	return nil
}

func (n *NAT) remove(c *nftables.Conn, tb *nftables.Table) error {
	c.AddTable(tb)
	c.DelTable(tb)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("failed to delete nftables %s: %w", nftutil.TableString(tb), err)
	}
	return nil
}

// isNotExist recognizes ENOENT, which some of the nftables library's
// calls return only as text.
func isNotExist(err error) bool {
	return nftutil.NotFound(err) || strings.HasSuffix(err.Error(), unix.ENOENT.Error())
}
