// Package relayed counts the traffic this node routes for others: packets
// that arrive on the WireGuard device and leave by it again, which is what
// a relay does (docs/routing.md), and keeps the relay from sending ICMP
// redirects about it. One nftables table, "inet mesh-relay" (both
// families: IPv6 pods are relayed as IPv4 ones are), with a forward chain
// whose one rule matches both interface names and adds to a named counter
// (it never drops nor changes a packet), and an output chain that drops
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
// The table is mesh's alone: Set creates it, or recreates it when its
// rules are not as wanted (which starts the counter from 0 again), Remove
// deletes it. The previous release's table, "ip mesh-relay" (IPv4 only),
// goes with the first Set and with Remove.
package relayed

import (
	"fmt"
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
//	chain output:  oifname DEV icmp type redirect drop
//	               oifname DEV icmpv6 type nd-redirect drop
func want(device string) []chainRules {
	name := nftutil.IfName(device)
	return []chainRules{
		{name: chainForward, hook: nftables.ChainHookForward, rules: []rule{
			{"relayed:" + device, []expr.Any{
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
				&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterName},
			}},
		}},
		{name: chainOutput, hook: nftables.ChainHookOutput, rules: []rule{
			{"redirect:" + device, nftutil.RedirectDrop(device, false)},
			{"redirect6:" + device, nftutil.RedirectDrop(device, true)},
		}},
	}
}

// Counter programs and reads the table.
type Counter struct {
	opts []nftables.ConnOption
	mu   sync.Mutex // serializes Set and Remove
}

// New returns a Counter for the network namespace of the calling process,
// or another one with nftables.WithNetNSFd.
func New(opts ...nftables.ConnOption) *Counter { return &Counter{opts: opts} }

func (c *Counter) conn() (*nftables.Conn, error) {
	nc, err := nftables.New(c.opts...)
	if err != nil {
		return nil, fmt.Errorf("failed to open nftables netlink connection: %w", err)
	}
	return nc, nil
}

// Set makes the table count forwarding from device to device and drop
// the redirects sent out of device. It writes nothing when the table is
// already as wanted, so calling it at every reconcile costs a few netlink
// dumps; otherwise it replaces the table in one transaction.
func (c *Counter) Set(device string) error {
	if device == "" || len(device) >= unix.IFNAMSIZ || strings.ContainsRune(device, 0) {
		return fmt.Errorf("invalid interface name %q for nftables %s", device, nftutil.TableString(table))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	nc, err := c.conn()
	if err != nil {
		return err
	}
	chains := want(device)
	if ok, err := upToDate(nc, chains); err != nil || ok {
		return err
	}
	deleteTables(nc)
	nc.AddTable(table)
	nc.AddObj(&nftables.CounterObj{Table: table, Name: counterName})
	accept := nftables.ChainPolicyAccept
	for _, w := range chains {
		ch := nc.AddChain(&nftables.Chain{Table: table, Name: w.name, Type: nftables.ChainTypeFilter,
			Hooknum: w.hook, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		for _, r := range w.rules {
			nc.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: r.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment)})
		}
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("failed to program nftables %s: %w", nftutil.TableString(table), err)
	}
	return nil
}

// upToDate reports whether the table holds the counter and exactly the
// chains, hooks and rules (told by their comments) of chains.
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
	objs := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(nc, table, objs); err != nil {
		return false, err
	}
	return objs[counterName] != nil, nil
}

// Read returns the packets and bytes counted since the table was created;
// zeros when it does not exist.
func (c *Counter) Read() (packets, bytes uint64, err error) {
	nc, err := c.conn()
	if err != nil {
		return 0, 0, err
	}
	ok, err := nftutil.TableExists(nc, table)
	if err != nil || !ok {
		return 0, 0, err
	}
	objs := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(nc, table, objs); err != nil {
		return 0, 0, err
	}
	if o := objs[counterName]; o != nil {
		return o.Packets, o.Bytes, nil
	}
	return 0, 0, nil
}

// Remove deletes the table, and the previous release's; no error if they do
// not exist.
func (c *Counter) Remove() error {
	c.mu.Lock()
	defer c.mu.Unlock()
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
