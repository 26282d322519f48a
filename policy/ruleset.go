package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// TableName is the nftables table (family inet) that holds all of mesh's
// policy rules. Nothing else is ever touched.
const TableName = "mesh-policy"

// Names of the fixed objects of the table. The maps and the self set are
// IPv4; their IPv6 twins are named with Family.tag (ingress6, ...).
const (
	chainForward = "forward" // base chain, hook forward
	chainInput   = "input"   // base chain, hook input: pods' egress to the node
	mapIngress   = "ingress" // pod IP -> jump to its ingress chain
	mapEgress    = "egress"  // pod IP -> jump to its egress chain
	mapDeny      = "deny"    // pod IP -> goto its default-deny chain
	setSelf      = "self"    // pod IP . pod IP: a pod reaching itself
)

// Family is the address family of a set, of a rule's address match and of
// a pod map's elements. The zero value is IPv4, so a rule that matches no
// address has the same value (and content) in either family's chain.
type Family uint8

const (
	IPv4 Family = iota
	IPv6
)

// families are the address families, in the order a Ruleset sorts them.
var families = [...]Family{IPv4, IPv6}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// word is nft's keyword for the family's header ("ip saddr", "ip6 saddr").
func (f Family) word() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// addrType is nft's type of the family's addresses.
func (f Family) addrType() string {
	if f == IPv6 {
		return "ipv6_addr"
	}
	return "ipv4_addr"
}

// tag names the IPv6 one of a pair of objects: ingress and ingress6, the
// peer sets p-<id>-in0 and p6-<id>-in0.
func (f Family) tag() string {
	if f == IPv6 {
		return "6"
	}
	return ""
}

// ofFamily returns the elements of xs whose address (by addr) is of
// family f, in their order.
func ofFamily[T any](xs []T, f Family, addr func(T) netip.Addr) []T {
	var out []T
	for _, x := range xs {
		if familyOf(addr(x)) == f {
			out = append(out, x)
		}
	}
	return out
}

func elemAddr(e MapElem) netip.Addr    { return e.Addr }
func sameAddr(a netip.Addr) netip.Addr { return a }

// Ruleset is the desired content of the table: what Build computes from the
// API objects and an Applier programs. Everything in it is sorted, so equal
// inputs give equal rulesets and String gives a stable text.
type Ruleset struct {
	Counters []Counter
	Sets     []Set
	// Ingress and Egress map a local pod's address to the chain holding its
	// rules; Deny maps it to its default-deny chain (only pods isolated by
	// more than one policy in a direction have one). Addresses of both
	// families, the IPv4 ones first: each family is its own nftables map.
	Ingress, Egress, Deny []MapElem
	Chains                []Chain
	// Self lists the local pods with ingress rules: a packet from one of
	// them to its own address can only be a hairpin (the pod reaching
	// itself through a Service, DNATed back to it), and a pod is never
	// judged by its own policies for that. Both families, as the maps.
	Self []netip.Addr

	// Policies is what Status reports: not programmed.
	Policies []PolicyStatus
}

// Counter is a named nftables counter of denied packets.
type Counter struct {
	Name string
	// Key is what DeniedPackets reports it under: "namespace/name" of a
	// policy, or of a pod for its default-deny counter.
	Key  string
	Kind CounterKind
	// Packets and Bytes are the initial values, carried over a rebuild.
	Packets, Bytes uint64
}

// CounterKind says what a Counter counts.
type CounterKind uint8

const (
	CounterPolicy CounterKind = iota // drops attributable to one policy
	CounterPod                       // drops of a pod isolated by several policies
)

// SetKind is the key type of a Set.
type SetKind uint8

const (
	// SetAddrs is an interval set of addresses.
	SetAddrs SetKind = iota
	// SetAddrProtoPort is a set of address . protocol . port.
	SetAddrProtoPort
)

// Set is a named set of peers, of addresses of one family.
type Set struct {
	Name    string
	Comment string
	Kind    SetKind
	Family  Family
	Ranges  []ipRange    // SetAddrs: sorted, disjoint, not adjacent
	Triples []AddrPortal // SetAddrProtoPort: sorted, unique
}

// bare is s without its elements: what defines it.
func (s Set) bare() Set {
	return Set{Name: s.Name, Comment: s.Comment, Kind: s.Kind, Family: s.Family}
}

// AddrPortal is an address, protocol and port.
type AddrPortal struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
}

func (a AddrPortal) String() string {
	return fmt.Sprintf("%s . %s . %d", a.Addr, protoName(a.Proto), a.Port)
}

// MapElem is an element of a verdict map: a pod address and the chain it
// jumps (Ingress, Egress) or goes (Deny) to.
type MapElem struct {
	Addr  netip.Addr
	Chain string
}

// Chain is a regular chain.
type Chain struct {
	Name  string
	Rules []Rule
}

// Field names the packet's address a rule matches.
type Field uint8

const (
	Saddr Field = iota + 1
	Daddr
)

func (f Field) String() string {
	if f == Saddr {
		return "saddr"
	}
	return "daddr"
}

// Verdict is what a rule does when it matches.
type Verdict uint8

const (
	Accept Verdict = iota + 1
	Return
	Drop
)

func (v Verdict) String() string {
	switch v {
	case Accept:
		return "accept"
	case Return:
		return "return"
	}
	return "drop"
}

// Rule is one rule of a regular chain. The fields that are set are matched
// in this order: the address Field in PeerSet, the address Field with
// protocol and destination port in TripleSet, the protocol, the port range;
// then Counter is counted and Verdict taken, or, with DenyMap, the address
// Field is looked up in the Deny map. Family is that of the address
// matched (the sets', the Deny map's); a rule matching no address leaves
// it IPv4 (zero), so it reads the same in the chains of both families.
type Rule struct {
	Field     Field
	Family    Family
	PeerSet   string // "" = any peer
	TripleSet string
	Proto     uint8  // 0 = any protocol
	PortLo    uint16 // 0 = any port
	PortHi    uint16
	Counter   string
	DenyMap   bool
	Verdict   Verdict
	Comment   string
}

// String renders r in nft syntax.
func (r Rule) String() string {
	var b strings.Builder
	if r.PeerSet != "" {
		fmt.Fprintf(&b, "%s %s @%s ", r.Family.word(), r.Field, r.PeerSet)
	}
	if r.TripleSet != "" {
		fmt.Fprintf(&b, "%s %s . meta l4proto . th dport @%s ", r.Family.word(), r.Field, r.TripleSet)
	}
	if r.Proto != 0 {
		fmt.Fprintf(&b, "meta l4proto %s ", protoName(r.Proto))
	}
	if r.PortLo != 0 {
		if r.PortHi > r.PortLo {
			fmt.Fprintf(&b, "th dport %d-%d ", r.PortLo, r.PortHi)
		} else {
			fmt.Fprintf(&b, "th dport %d ", r.PortLo)
		}
	}
	if r.DenyMap {
		fmt.Fprintf(&b, "%s %s vmap @%s%s", r.Family.word(), r.Field, mapDeny, r.Family.tag())
	} else {
		if r.Counter != "" {
			fmt.Fprintf(&b, "counter name %q ", r.Counter)
		}
		b.WriteString(r.Verdict.String())
	}
	if r.Comment != "" {
		fmt.Fprintf(&b, " comment %q", r.Comment)
	}
	return b.String()
}

// Base chains, the same in every ruleset.
var baseChainText = []string{
	`chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		ip saddr . ip daddr @self accept
		ip6 saddr . ip6 daddr @self6 accept
		ip saddr vmap @egress
		ip6 saddr vmap @egress6
		ip daddr vmap @ingress
		ip6 daddr vmap @ingress6
	}`,
	`chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		icmpv6 type 135-136 ip6 hoplimit 255 accept
		ip saddr vmap @egress
		ip6 saddr vmap @egress6
	}`,
}

// String renders the ruleset in nft syntax (close to `nft list table`, not
// byte for byte): the stable text form compared with golden files.
func (rs *Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for _, c := range rs.Counters {
		fmt.Fprintf(&b, "\tcounter %q { # %s %s\n\t}\n", c.Name, c.kindName(), c.Key)
	}
	for _, s := range rs.Sets {
		fmt.Fprintf(&b, "\tset %s {\n", s.Name)
		var elems []string
		switch s.Kind {
		case SetAddrs:
			fmt.Fprintf(&b, "\t\ttype %s; flags interval\n", s.Family.addrType())
			for _, r := range s.Ranges {
				elems = append(elems, r.String())
			}
		case SetAddrProtoPort:
			fmt.Fprintf(&b, "\t\ttype %s . inet_proto . inet_service\n", s.Family.addrType())
			for _, t := range s.Triples {
				elems = append(elems, t.String())
			}
		}
		if s.Comment != "" {
			fmt.Fprintf(&b, "\t\tcomment %q\n", s.Comment)
		}
		writeElems(&b, elems)
		b.WriteString("\t}\n")
	}
	for _, m := range []struct {
		name  string
		elems []MapElem
		verb  string
	}{{mapIngress, rs.Ingress, "jump"}, {mapEgress, rs.Egress, "jump"}, {mapDeny, rs.Deny, "goto"}} {
		for _, f := range families {
			fmt.Fprintf(&b, "\tmap %s%s {\n\t\ttype %s : verdict\n", m.name, f.tag(), f.addrType())
			var elems []string
			for _, e := range ofFamily(m.elems, f, elemAddr) {
				elems = append(elems, fmt.Sprintf("%s : %s %s", e.Addr, m.verb, e.Chain))
			}
			writeElems(&b, elems)
			b.WriteString("\t}\n")
		}
	}
	for _, f := range families {
		fmt.Fprintf(&b, "\tset %s%s {\n\t\ttype %s . %[3]s\n", setSelf, f.tag(), f.addrType())
		var self []string
		for _, a := range ofFamily(rs.Self, f, sameAddr) {
			self = append(self, fmt.Sprintf("%s . %s", a, a))
		}
		writeElems(&b, self)
		b.WriteString("\t}\n")
	}
	for _, c := range baseChainText {
		fmt.Fprintf(&b, "\t%s\n", c)
	}
	for _, c := range rs.Chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func writeElems(b *strings.Builder, elems []string) {
	if len(elems) == 0 {
		return
	}
	b.WriteString("\t\telements = {")
	for i, e := range elems {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n\t\t\t" + e)
	}
	b.WriteString("\n\t\t}\n")
}

func (c Counter) kindName() string {
	if c.Kind == CounterPod {
		return "default-deny of pod"
	}
	return "policy"
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return fmt.Sprint(p)
}

// IP protocol numbers.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// chainOf returns the chain named name, or nil.
func (rs *Ruleset) chainOf(name string) *Chain {
	i := slices.IndexFunc(rs.Chains, func(c Chain) bool { return c.Name == name })
	if i < 0 {
		return nil
	}
	return &rs.Chains[i]
}
