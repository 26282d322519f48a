package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// TestRelayTransientLoop makes on purpose the loop that two nodes whose
// views differ could form for a moment (docs/routing.md, "While views
// differ"): host1 sends pod d's address (on host3) to host2, and host2
// sends it back to host1. Routes alone do not make it: each host's
// WireGuard takes a packet from a peer only if the peer may route its
// source, and a detour back to the sender's host dies there. So host1's
// entry for host2 also gets pod a's address (a on host1), as a node that
// believed host2 carried a's traffic would hold it. The test writes both
// entries through the data planes' UAPI sockets, as `wg set` would.
//
// Then echoes from a to d circle between host1 and host2. What must hold:
// each is routed at most 63 times in all (sent with TTL 64, every routing
// host decrements it once and the one that would reach 0 drops it and
// answers "time to live exceeded"), so the loop never copies a packet and
// dies by itself; and the daemons' next reconcile, which compares their
// devices with what they want (fastdp's wgDiff), ends the loop: a and d
// reach each other again.
func TestRelayTransientLoop(t *testing.T) {
	nodes, hosts, a, d, ctx := endPods(t, 3, 6*time.Minute)
	for _, h := range hosts[:2] {
		addLoopCounters(ctx, t, h, a, d, 59)
	}
	key12 := entryFor(ctx, t, nodes[0], hosts[1].Name) // host2's entry at host1
	key21 := entryFor(ctx, t, nodes[1], hosts[0].Name) // host1's entry at host2
	dHost := netip.PrefixFrom(d.ip, d.ip.BitLen()).String()
	aHost := netip.PrefixFrom(a.ip, a.ip.BitLen()).String()

	// The daemons repair the devices at their next reconcile (every 5 s
	// at most): a burst that finds the loop already gone is tried again.
	const burst = 5
	var (
		loopSeen        bool
		routedSum       int64
		lowSum          int64
		sentSum, answer int
	)
	for attempt := 1; attempt <= 4 && !loopSeen; attempt++ {
		before := [2]int64{nftCounter(ctx, t, hosts[0], "ip", loopTable, "routed"), nftCounter(ctx, t, hosts[1], "ip", loopTable, "routed")}
		lowBefore := nftCounter(ctx, t, hosts[0], "ip", loopTable, "low") + nftCounter(ctx, t, hosts[1], "ip", loopTable, "low")
		if err := uapiSet(hosts[0], key12, dHost, aHost); err != nil {
			t.Fatal(err)
		}
		if err := uapiSet(hosts[1], key21, dHost); err != nil {
			t.Fatal(err)
		}
		out, _ := a.exec(ctx, "ping", "-c", strconv.Itoa(burst), "-i", "0.2", "-W", "1", d.ip.String())
		m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("ping from a to d: %s", out)
		}
		sent, _ := strconv.Atoi(m[1])
		received, _ := strconv.Atoi(m[2])
		routed := nftCounter(ctx, t, hosts[0], "ip", loopTable, "routed") - before[0] +
			nftCounter(ctx, t, hosts[1], "ip", loopTable, "routed") - before[1]
		low := nftCounter(ctx, t, hosts[0], "ip", loopTable, "low") + nftCounter(ctx, t, hosts[1], "ip", loopTable, "low") - lowBefore
		t.Logf("attempt %d: %d echoes sent, %d answered; host1 and host2 routed %d of them and their answers, %d below TTL 59", attempt, sent, received, routed, low)
		routedSum += routed
		lowSum += low
		sentSum += sent
		answer += received
		if low > 0 {
			loopSeen = true
			if received == sent {
				t.Errorf("every echo was answered although %d packets went below TTL 59", low)
			}
		}
	}
	if !loopSeen {
		t.Fatal("no echo went around the loop in 4 attempts: the test did not make one")
	}
	// The bound: an echo is routed at most 63 times by these two hosts,
	// and an answer once (by host1; host3 sends it there directly):
	// nothing is copied, or some echo would count twice as often.
	if limit := int64(63*sentSum + answer); routedSum > limit {
		t.Errorf("host1 and host2 routed %d packets for %d echoes (%d answered): more than the TTL allows (%d), packets were copied", routedSum, sentSum, answer, limit)
	}
	// The loop was a real one: looping echoes were routed many times.
	if lowSum < 10 {
		t.Errorf("only %d packets were routed below TTL 59", lowSum)
	}

	// The reconcile restores both devices within peer.ResyncInterval (30
	// s) and a reconcile tick (5 s): the entries lose the injected
	// addresses, and a and d reach each other again.
	injected := time.Now()
	testnet.Eventually(t, 75*time.Second, 500*time.Millisecond, func() error {
		for _, c := range []struct {
			h   *testnet.Host
			key string
		}{{hosts[0], key12}, {hosts[1], key21}} {
			allowed, err := uapiAllowed(c.h, c.key)
			if err != nil {
				return err
			}
			for _, p := range allowed {
				if p == dHost || p == aHost {
					return fmt.Errorf("%s's entry still holds %s", c.h.Name, p)
				}
			}
		}
		return pingBoth(ctx, a, d)
	})
	t.Logf("the daemons restored their devices %v after the last injection", time.Since(injected).Round(time.Second))
	for _, n := range nodes[:2] {
		if !strings.Contains(n.Proc.Log(), driftRestoredLog) {
			t.Errorf("%s's log does not say %q", n.Host.Name, driftRestoredLog)
		}
	}
	// And no echo loops any more.
	lowBefore := nftCounter(ctx, t, hosts[0], "ip", loopTable, "low") + nftCounter(ctx, t, hosts[1], "ip", loopTable, "low")
	if err := pingPod(ctx, a, d, "-c", "5", "-i", "0.2"); err != nil {
		t.Fatal(err)
	}
	if low := nftCounter(ctx, t, hosts[0], "ip", loopTable, "low") + nftCounter(ctx, t, hosts[1], "ip", loopTable, "low") - lowBefore; low != 0 {
		t.Errorf("%d packets below TTL 59 after the repair", low)
	}
}

// driftRestoredLog is what a daemon logs when its resync finds the
// WireGuard device changed from outside (fastdp).
const driftRestoredLog = "the WireGuard device was changed from outside: restored its peers"

// entryFor is the public key (hex, as UAPI writes it) of n's WireGuard
// entry for peer: the entry whose allowed IPs hold those n's status shows
// for peer.
func entryFor(ctx context.Context, t *testing.T, n *node, peer string) string {
	t.Helper()
	var key string
	testnet.Eventually(t, 30*time.Second, 500*time.Millisecond, func() error {
		c, err := connTo(n, peer)
		if err != nil {
			return err
		}
		if len(c.AllowedIPs) == 0 {
			return fmt.Errorf("%s shows no allowed IPs for %s", n.Host.Name, peer)
		}
		entries, err := uapiEntries(n.Host)
		if err != nil {
			return err
		}
		for k, allowed := range entries {
			for _, p := range allowed {
				if p == c.AllowedIPs[0] {
					key = k
					return nil
				}
			}
		}
		return fmt.Errorf("no entry of %s's device holds %s (%s's)", n.Host.Name, c.AllowedIPs[0], peer)
	})
	return key
}

// uapiRequest sends one request to h's data plane (device mesh-wg) through
// its UAPI socket and returns the answer's lines, without the empty line
// that ends it.
func uapiRequest(h *testnet.Host, req string) ([]string, error) {
	c, err := net.DialTimeout("unix", h.Path("/var/run/wireguard/mesh-wg.sock"), 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		l := sc.Text()
		if l == "" {
			return lines, nil
		}
		lines = append(lines, l)
	}
	return nil, fmt.Errorf("UAPI on %s: no end of answer: %v", h.Name, sc.Err())
}

// uapiEntries lists h's WireGuard entries: public key (hex) -> allowed IPs.
func uapiEntries(h *testnet.Host) (map[string][]string, error) {
	lines, err := uapiRequest(h, "get=1\n\n")
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	var key string
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "=")
		switch k {
		case "public_key":
			key = v
			out[key] = nil
		case "allowed_ip":
			if key != "" {
				out[key] = append(out[key], v)
			}
		case "errno":
			if v != "0" {
				return nil, fmt.Errorf("UAPI get on %s: errno %s", h.Name, v)
			}
		}
	}
	return out, nil
}

// uapiAllowed is the allowed IPs of h's entry key.
func uapiAllowed(h *testnet.Host, key string) ([]string, error) {
	entries, err := uapiEntries(h)
	if err != nil {
		return nil, err
	}
	allowed, ok := entries[key]
	if !ok {
		return nil, fmt.Errorf("%s has no entry %s", h.Name, key)
	}
	return allowed, nil
}

// uapiSet adds prefixes to h's entry key (WireGuard moves a prefix held by
// another entry to this one), as `wg set mesh-wg peer KEY allowed-ips`
// with the entry's own kept would.
func uapiSet(h *testnet.Host, key string, prefixes ...string) error {
	req := "set=1\npublic_key=" + key + "\nupdate_only=true\n"
	for _, p := range prefixes {
		req += "allowed_ip=" + p + "\n"
	}
	lines, err := uapiRequest(h, req+"\n")
	if err != nil {
		return err
	}
	if len(lines) != 1 || lines[0] != "errno=0" {
		return fmt.Errorf("UAPI set on %s: %q", h.Name, lines)
	}
	return nil
}
