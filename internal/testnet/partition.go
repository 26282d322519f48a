package testnet

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// nftTable is the nftables table (bridge family, in the switch namespace)
// holding the partition rules.
const nftTable = "testnet"

// Partition drops all traffic (every protocol, ARP included) between each
// host of a and each host of b, in both directions, at the switch. Traffic
// within a group and to hosts in neither group is untouched. Partitions
// accumulate until Heal. It blocks until the rules are in place (existing
// connections are cut too: the rules match frames, not connections) and
// needs the nft tool. A host may not be in both groups.
func (n *Net) Partition(a, b []*Host) error {
	return n.partition(a, b, true)
}

// PartitionOneWay drops all traffic from each host of from to each host of
// to, and lets the other direction through: a one-way link failure (the
// hosts of to never hear from the hosts of from, whose packets to them are
// lost, while their own packets still arrive). ARP passes both ways, or
// the open direction could not resolve addresses either. Otherwise as
// Partition; Heal removes it too.
func (n *Net) PartitionOneWay(from, to []*Host) error {
	return n.partition(from, to, false)
}

func (n *Net) partition(a, b []*Host, both bool) error {
	inA := map[*Host]bool{}
	for _, h := range append(slices.Clone(a), b...) {
		if h.site != nil {
			return fmt.Errorf("failed to partition: host %q is on a site (partitions cut the first network's switch; a site's router forwards only what Allow names)", h.Name)
		}
	}
	for _, h := range a {
		if h.net != n {
			return fmt.Errorf("failed to partition: host %q is not in this net", h.Name)
		}
		inA[h] = true
	}
	var rules strings.Builder
	fmt.Fprintf(&rules, "table bridge %s {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n }\n}\n", nftTable)
	for _, hb := range b {
		if hb.net != n {
			return fmt.Errorf("failed to partition: host %q is not in this net", hb.Name)
		}
		if inA[hb] {
			return fmt.Errorf("failed to partition: host %q is in both groups", hb.Name)
		}
		for _, ha := range a {
			dirs := [][2]*Host{{ha, hb}}
			if both {
				dirs = append(dirs, [2]*Host{hb, ha})
			}
			// One way, ARP must pass: the open direction needs the
			// answers of its address resolution.
			match := ""
			if !both {
				match = "ether type { ip, ip6 } "
			}
			for _, dir := range dirs {
				fmt.Fprintf(&rules, "add rule bridge %s forward iifname %q oifname %q %sdrop\n",
					nftTable, dir[0].switchPort(), dir[1].switchPort(), match)
			}
		}
	}
	if err := n.nft(rules.String()); err != nil {
		return fmt.Errorf("failed to partition %v from %v (both ways: %v): %w", a, b, both, err)
	}
	return nil
}

// Heal removes all partitions. It blocks until the rules are gone and is a
// no-op without partitions.
func (n *Net) Heal() error {
	// Declaring the table first makes the delete succeed when it is absent.
	script := fmt.Sprintf("table bridge %s {}\ndelete table bridge %s\n", nftTable, nftTable)
	if err := n.nft(script); err != nil {
		return fmt.Errorf("failed to heal partitions: %w", err)
	}
	return nil
}

// nft applies an nft script atomically in the switch namespace.
func (n *Net) nft(script string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("testnet already cleaned up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	return runCmd(ctx, script, "nsenter", "--net="+n.switchNS(), "nft", "-f", "-")
}
