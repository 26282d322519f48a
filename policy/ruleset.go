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

// Names of the fixed objects of the table.
const (
	chainForward = "forward" // base chain, hook forward
	chainInput   = "input"   // base chain, hook input: pods' egress to the node
	mapIngress   = "ingress" // pod IP -> jump to its ingress chain
	mapEgress    = "egress"  // pod IP -> jump to its egress chain
	mapDeny      = "deny"    // pod IP -> goto its default-deny chain
	setSelf      = "self"    // pod IP . pod IP: a pod reaching itself
)

// Ruleset is the desired content of the table: what Build computes from the
// API objects and an Applier programs. Everything in it is sorted, so equal
// inputs give equal rulesets and String gives a stable text.
type Ruleset struct {
	Counters []Counter
	Sets     []Set
	// Ingress and Egress map a local pod's address to the chain holding its
	// rules; Deny maps it to its default-deny chain (only pods isolated by
	// more than one policy in a direction have one).
	Ingress, Egress, Deny []MapElem
	Chains                []Chain
	// Self lists the local pods with ingress rules: a packet from one of
	// them to its own address can only be a hairpin (the pod reaching
	// itself through a Service, DNATed back to it), and a pod is never
	// judged by its own policies for that.
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
	// SetAddrs is an interval set of IPv4 addresses.
	SetAddrs SetKind = iota
	// SetAddrProtoPort is a set of IPv4 address . protocol . port.
	SetAddrProtoPort
)

// Set is a named set of peers.
type Set struct {
	Name    string
	Comment string
	Kind    SetKind
	Ranges  []ipRange    // SetAddrs: sorted, disjoint, not adjacent
	Triples []AddrPortal // SetAddrProtoPort: sorted, unique
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
// Field is looked up in the Deny map.
type Rule struct {
	Field     Field
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
		fmt.Fprintf(&b, "ip %s @%s ", r.Field, r.PeerSet)
	}
	if r.TripleSet != "" {
		fmt.Fprintf(&b, "ip %s . meta l4proto . th dport @%s ", r.Field, r.TripleSet)
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
		fmt.Fprintf(&b, "ip %s vmap @%s", r.Field, mapDeny)
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
		ip saddr vmap @egress
		ip daddr vmap @ingress
	}`,
	`chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		ip saddr vmap @egress
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
			b.WriteString("\t\ttype ipv4_addr; flags interval\n")
			for _, r := range s.Ranges {
				elems = append(elems, r.String())
			}
		case SetAddrProtoPort:
			b.WriteString("\t\ttype ipv4_addr . inet_proto . inet_service\n")
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
		fmt.Fprintf(&b, "\tmap %s {\n\t\ttype ipv4_addr : verdict\n", m.name)
		var elems []string
		for _, e := range m.elems {
			elems = append(elems, fmt.Sprintf("%s : %s %s", e.Addr, m.verb, e.Chain))
		}
		writeElems(&b, elems)
		b.WriteString("\t}\n")
	}
	b.WriteString("\tset self {\n\t\ttype ipv4_addr . ipv4_addr\n")
	var self []string
	for _, a := range rs.Self {
		self = append(self, fmt.Sprintf("%s . %s", a, a))
	}
	writeElems(&b, self)
	b.WriteString("\t}\n")
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
