// Package nftutil holds what the packages that own an nftables table of
// their own (policy, isolation, fastdp/nat) need alike: telling a missing
// object from a failure, whether a table exists, reading its named
// counters, and the ruleset's generation.
package nftutil

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// NotFound reports whether err says the object asked for does not exist.
func NotFound(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT)
}

// TableString names tb as nft does: "table inet mesh-policy".
func TableString(tb *nftables.Table) string {
	fam := "inet"
	switch tb.Family {
	case nftables.TableFamilyBridge:
		fam = "bridge"
	case nftables.TableFamilyIPv4:
		fam = "ip"
	case nftables.TableFamilyIPv6:
		fam = "ip6"
	}
	return "table " + fam + " " + tb.Name
}

// TableExists reports whether tb exists. It blocks for one netlink round
// trip on c.
func TableExists(c *nftables.Conn, tb *nftables.Table) (bool, error) {
	_, err := c.ListTableOfFamily(tb.Name, tb.Family)
	if err == nil {
		return true, nil
	}
	if NotFound(err) {
		return false, nil
	}
	return false, fmt.Errorf("failed to look up nftables %s: %w", TableString(tb), err)
}

// ReadCounters adds the named counters of tb, which must exist, to out.
// The library returns them as CounterObj or, depending on the kernel's
// answer, as NamedObj holding an expr.Counter: both are read.
func ReadCounters(c *nftables.Conn, tb *nftables.Table, out map[string]*nftables.CounterObj) error {
	objs, err := c.GetObjects(tb)
	if err != nil {
		return fmt.Errorf("failed to read the counters of %s: %w", TableString(tb), err)
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *nftables.CounterObj:
			out[o.Name] = o
		case *nftables.NamedObj:
			if ctr, ok := o.Obj.(*expr.Counter); ok {
				out[o.Name] = &nftables.CounterObj{Name: o.Name, Packets: ctr.Packets, Bytes: ctr.Bytes}
			}
		}
	}
	return nil
}

// IfName is an interface name as nftables keys it: NUL-padded to
// IFNAMSIZ bytes.
func IfName(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// ICMP redirect types: IPv4's (RFC 792) and ICMPv6's (RFC 4861).
const (
	ICMPRedirect   = 5
	ICMPv6Redirect = 137
)

// RedirectDrop is a rule that drops the ICMP redirects of one family (IPv6
// with v6) that the host sends out of the interface oif, in a chain of
// hook output of an inet table:
//
//	oifname OIF icmp type redirect drop
//	oifname OIF icmpv6 type nd-redirect drop
//
// The kernel sends one when it forwards a packet out of the interface it
// came in on; where that interface is not a shared medium (a bridge whose
// hosts must not be told to bypass the host, a WireGuard device) the
// advice is useless or harmful.
func RedirectDrop(oif string, v6 bool) []expr.Any {
	nfproto, l4proto, typ := byte(unix.NFPROTO_IPV4), byte(unix.IPPROTO_ICMP), byte(ICMPRedirect)
	if v6 {
		nfproto, l4proto, typ = unix.NFPROTO_IPV6, unix.IPPROTO_ICMPV6, ICMPv6Redirect
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: IfName(oif)},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// Generation returns the ruleset generation of the network namespace whose
// file descriptor is netns (0: the caller's). The kernel increments it with
// every committed nftables transaction, of any table and any program, so a
// reader that finds the generation it saw before knows that nothing in the
// ruleset changed meanwhile: one netlink round trip instead of dumping the
// tables to compare them. It blocks for that round trip.
func Generation(netns int) (uint32, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return 0, fmt.Errorf("failed to open a netfilter netlink socket: %w", err)
	}
	defer c.Close()
	typ := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: typ, Flags: netlink.Request},
		// struct nfgenmsg: family, version, resource id.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("failed to read the nftables generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("failed to decode the nftables generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("failed to decode the nftables generation: %w", err)
		}
	}
	return 0, errors.New("failed to read the nftables generation: the kernel's answer holds none")
}

// Settled remembers that a table was last found as its owner wanted it: the
// wanted state's key and the ruleset generation at that time. An owner
// that reconciles its table every few seconds goes through Settle, which
// reads the generation first and, when neither it nor the wanted state
// moved, has nothing to read or write. The zero value knows nothing. Not
// safe for concurrent use: the owner's lock guards it.
type Settled struct {
	key   string
	gen   uint32
	known bool
}

// Settle runs work unless the table is still settled in key (Check), and
// notes it settled at the generation read before work when work reports
// the table as key wants it (ok): a change made during work is seen next
// time. It returns true without running work when settled; otherwise
// work's answer.
func (s *Settled) Settle(netns int, key string, work func() (ok bool, err error)) (bool, error) {
	gen, genOK, settled := s.Check(netns, key)
	if settled {
		return true, nil
	}
	ok, err := work()
	if err != nil || !ok {
		s.Forget()
		return ok, err
	}
	if genOK {
		s.key, s.gen, s.known = key, gen, true
	}
	return true, nil
}

// Check reads the generation of the namespace netns (see Generation) and
// reports whether the table is still settled in key, with the generation
// read; genOK is false when it could not be read (never settled then).
func (s *Settled) Check(netns int, key string) (gen uint32, genOK, settled bool) {
	gen, err := Generation(netns)
	if err != nil {
		return 0, false, false
	}
	return gen, true, s.known && s.key == key && s.gen == gen
}

// Forget drops what was noted: the owner changed or removed its table
// in a way Settle did not see.
func (s *Settled) Forget() { s.known = false }
