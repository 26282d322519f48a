package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshnet/mesh/api"
)

// formatIPAM prints the ring as this node sees it: one line per peer with
// what it owns, unreachable owners marked, then any problem in plain words;
// in a dual-stack mesh the IPv6 ring follows, in the same form.
func formatIPAM(w io.Writer, st *api.Status) {
	if st.IPAM == nil {
		fmt.Fprintln(w, "IPAM is not running on this node.")
		return
	}
	formatRing(w, st.Name, st.IPAM, st.OverlayIP)
	if st.IPAM6 != nil {
		fmt.Fprintln(w, "\nIPv6:")
		formatRing(w, st.Name, st.IPAM6, st.OverlayIP6)
	}
}

// formatRing prints one family's ring; self names this node.
func formatRing(w io.Writer, self string, ip *api.IPAM, overlay string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Range:\t%s\n", ip.Range)
	fmt.Fprintf(tw, "Status:\t%s\n", ip.Status)
	if overlay != "" {
		fmt.Fprintf(tw, "Overlay IP:\t%s\n", overlay)
	}
	fmt.Fprintf(tw, "Allocated:\t%d\n", ip.Allocated)
	fmt.Fprintf(tw, "Free:\t%d\n", ip.Free)
	if ip.Blocked != "" {
		fmt.Fprintf(tw, "Blocked:\t%s\n", ip.Blocked)
	}
	if ip.SignedStates != nil {
		// A label no longer than the others: a longer one would realign
		// every line that scripts may match.
		fmt.Fprintf(tw, "Signed:\t%s\n", signedLine(ip.SignedStates))
		// Beside it, as both come with the same release.
		changes := "whole states (a member cannot read deltas)"
		if ip.Deltas {
			changes = "deltas"
		}
		if ip.Digests {
			changes += "; push/pull by digest"
		}
		fmt.Fprintf(tw, "Changes:\t%s\n", changes)
		// Whether the others refuse a transfer of this node's space
		// without its word (docs/ipam.md, "Signed ring transfers").
		space := "not listed yet (a member cannot read the list, or states are not signed yet)"
		switch {
		case ip.OwnedListed && ip.ReclaimsVouched:
			space = "listed in its signed infos; a reclaim moves it only with a majority's vouches"
		case ip.OwnedListed:
			space = "listed in its signed infos"
		}
		fmt.Fprintf(tw, "Space:\t%s\n", space)
	}
	if ip.Tombstones > 0 || ip.TombstonesDropped > 0 {
		// Removed peers the state still carries (docs/ipam.md,
		// "Dropping tombstones"); only once there are any, as most
		// meshes never remove a peer.
		kept := "none dropped until every member reads acknowledgements"
		if ip.TombstonesAcked {
			kept = fmt.Sprintf("each dropped once every peer has acknowledged it (%d dropped since start)", ip.TombstonesDropped)
		}
		fmt.Fprintf(tw, "Removed:\t%d kept; %s\n", ip.Tombstones, kept)
	}
	tw.Flush()
	peers := append([]api.IPAMPeer(nil), ip.Peers...)
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	if len(peers) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tADDRESSES\tRANGE %\tNOTE")
		for _, p := range peers {
			var notes []string
			if p.Name == self {
				notes = append(notes, "self")
			} else if !p.Reachable && !p.Removed {
				notes = append(notes, "unreachable")
			}
			if p.Joining {
				notes = append(notes, "joining")
			}
			if p.Removed {
				notes = append(notes, "removed")
			}
			if p.Reserved > 0 {
				notes = append(notes, fmt.Sprintf("%d reserved for its pods", p.Reserved))
			}
			fmt.Fprintf(tw, "%s\t%d\t%.1f%%\t%s\n", p.Name, p.Addresses, p.Percent, strings.Join(notes, ", "))
		}
		tw.Flush()
	}
	if len(ip.Problems) > 0 {
		fmt.Fprintln(w, "\nProblems:")
		for _, p := range ip.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}

// formatConnections prints one line per data-plane peer, sorted by name.
func formatConnections(w io.Writer, st *api.Status, now time.Time) {
	if st.Dataplane == "" || st.Dataplane == "none" {
		fmt.Fprintln(w, "The data plane is not running on this node (--dataplane none).")
		return
	}
	fmt.Fprintf(w, "Data plane: %s, MTU %d, relayed for others: %s\n\n", st.Dataplane, st.MTU, bytesHuman(st.RelayedBytes))
	cs := append([]api.Connection(nil), st.Connections...)
	sort.Slice(cs, func(i, j int) bool { return cs[i].Peer < cs[j].Peer })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// RELAYED: what this node routed for others that came from the peer.
	// EST RTT: the round trip the relay choice estimates from coordinates.
	fmt.Fprintln(tw, "PEER\tENDPOINT\tSTATE\tPATH\tRTT\tEST RTT\tLAST HANDSHAKE\tRX\tTX\tRELAYED\tMTU")
	for _, c := range cs {
		hs := "never"
		if t, err := time.Parse(time.RFC3339, c.LastHandshake); err == nil {
			hs = now.Sub(t).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", c.Peer, c.Endpoint, c.State, connPath(c), millis(c.RTTMillis), millis(c.EstimatedRTTMillis), hs,
			bytesHuman(c.RxBytes), bytesHuman(c.TxBytes), bytesHuman(c.RelayedBytes), st.MTU)
	}
	tw.Flush()
}

// connPath is how traffic to the peer goes: direct, or "via" its relay;
// a direct path that probes find down and no relay replaces says so.
func connPath(c api.Connection) string {
	switch {
	case c.Via != "" && c.EndToEnd:
		return "via " + c.Via + " (end to end)"
	case c.Via != "":
		return "via " + c.Via
	case c.DirectPath == api.PathDown:
		return "direct (down)"
	}
	return "direct"
}

// millis is a round trip for the table, "-" when absent.
func millis(ms float64) string {
	if ms <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", ms)
}

func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// maxHoldersShown bounds the members named on the Signed line; the JSON
// output lists them all.
const maxHoldersShown = 5

// signedLine says whether the node sends signed IPAM states, and while it
// does not, which members hold it back.
func signedLine(s *api.SignedStates) string {
	if s.Sending {
		return "yes"
	}
	if len(s.WaitingFor) == 0 {
		if s.Settling {
			return "not yet (the membership changed a moment ago)"
		}
		return "not yet (no other member is live)"
	}
	parts := make([]string, 0, min(len(s.WaitingFor), maxHoldersShown)+1)
	for i, h := range s.WaitingFor {
		if i == maxHoldersShown {
			parts = append(parts, fmt.Sprintf("and %d more", len(s.WaitingFor)-i))
			break
		}
		p := h.Name + ": " + h.Reason
		if !h.State.Live() {
			p += ", " + string(h.State)
		}
		parts = append(parts, p)
	}
	return "not yet (waiting for " + strings.Join(parts, "; ") + ")"
}
