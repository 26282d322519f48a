// Package nftutil holds what the packages that own an nftables table of
// their own (policy, isolation, fastdp/nat) need alike: telling a missing
// object from a failure, whether a table exists, and reading its named
// counters.
package nftutil

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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
