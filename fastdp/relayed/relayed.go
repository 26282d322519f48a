// Package relayed counts the traffic this node routes for others: packets
// that arrive on the WireGuard device and leave by it again, which is what
// a relay does (docs/routing.md). One nftables table, "inet mesh-relay"
// (both families: IPv6 pods are relayed as IPv4 ones are), with one
// forward chain and one rule that matches both interface names and adds to
// a named counter; it never drops nor changes a packet.
//
// What it counts: the IP packets (their length, headers included) the
// kernel forwards from the device back into it, after decryption and
// before re-encryption; not WireGuard's own overhead on the wire. Traffic
// this node's own pods send or receive never goes from the device to the
// device, so it is not counted.
//
// The table is mesh's alone: Set creates it, or recreates it when its rule
// is not as wanted (which starts the counter from 0 again), Remove deletes
// it. The previous release's table, "ip mesh-relay" (IPv4 only), goes with
// the first Set and with Remove.
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
	chainName   = "forward"
	counterName = "relayed"
)

var (
	table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// legacyTable is the previous release's, which counted IPv4 alone.
	legacyTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
)

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

// comment marks the rule with the device it counts, so that Set can tell
// an unchanged table with one netlink dump.
func comment(device string) string { return "relayed:" + device }

// Set makes the table count forwarding from device to device. It writes
// nothing when the rule is already there, so calling it at every
// reconcile costs one netlink dump; otherwise it replaces the table in one
// transaction.
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
	if have, err := currentComment(nc); err != nil {
		return err
	} else if have == comment(device) {
		return nil
	}
	deleteTables(nc)
	nc.AddTable(table)
	nc.AddObj(&nftables.CounterObj{Table: table, Name: counterName})
	accept := nftables.ChainPolicyAccept
	ch := nc.AddChain(&nftables.Chain{Table: table, Name: chainName, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, device)
	nc.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterName},
	}, UserData: userdata.AppendString(nil, userdata.TypeComment, comment(device))})
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("failed to program nftables %s: %w", nftutil.TableString(table), err)
	}
	return nil
}

// currentComment is the comment of the chain's only rule; "" when the
// table, the chain or the rule is missing or not as Set makes it.
func currentComment(nc *nftables.Conn) (string, error) {
	ch, err := nc.ListChain(table, chainName)
	if err != nil {
		if notExist(err) {
			return "", nil
		}
		return "", fmt.Errorf("failed to look up chain %s of nftables %s: %w", chainName, nftutil.TableString(table), err)
	}
	if ch == nil || ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward {
		return "", nil
	}
	rs, err := nc.GetRules(table, ch)
	if err != nil {
		if notExist(err) {
			return "", nil
		}
		return "", fmt.Errorf("failed to list the rules of nftables %s: %w", nftutil.TableString(table), err)
	}
	if len(rs) != 1 {
		return "", nil
	}
	objs := map[string]*nftables.CounterObj{}
	if err := nftutil.ReadCounters(nc, table, objs); err != nil {
		return "", err
	}
	if objs[counterName] == nil {
		return "", nil
	}
	s, _ := userdata.GetString(rs[0].UserData, userdata.TypeComment)
	return s, nil
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
