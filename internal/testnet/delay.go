package testnet

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// delayWirePkg is the forwarder DelayLink runs, relative to the module root.
const delayWirePkg = "./internal/testnet/testdata/delaywire"

// delayReadyTimeout bounds the wait for the forwarder to open its links.
const delayReadyTimeout = 10 * time.Second

// DelayLink delays every frame between the host and its switch by d in
// each direction, so a round trip between the host and any other host gains
// 2*d (4*d between two hosts that both have DelayLink(d)). It works without
// sch_netem: in the host's network namespace eth0 is renamed "wire0" (still
// on the switch, now without addresses) and a new veth pair "eth0" <->
// "wire1" takes over the old eth0's MAC address, MTU, addresses and routes
// (of the main table); a forwarder process (testdata/delaywire) copies the
// frames between wire0 and wire1, each after d. The kernel's IP stack does
// not use wire0 and wire1 (no ARP, no IPv6, reverse-path filtered), so no
// packet takes a way around the delay.
//
// The delay is fixed (no jitter), the frames keep their order and each
// direction queues at most 4096 frames, dropping the others: d times the
// packet rate must stay below that. VLAN tags are not carried over.
//
// Call it once per host, before daemons are started on it (they would see
// their link disappear), from the goroutine of t. It blocks until frames
// flow and fails t, naming the step, on any error. The forwarder is started
// with Start, so it lives until t ends (then the host is cut off from the
// switch) or the Net is cleaned up.
func (h *Host) DelayLink(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		t.Fatalf("DelayLink on %s: delay %v is not positive", h.Name, d)
	}
	bin := BuildBinary(t, delayWirePkg)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	run := func(step string, args ...string) string {
		t.Helper()
		out, err := h.Run(ctx, args[0], args[1:]...)
		if err != nil {
			t.Fatalf("DelayLink on %s: failed to %s: %v", h.Name, step, err)
		}
		return out
	}
	decode := func(step, out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("DelayLink on %s: failed to %s: parsing %q: %v", h.Name, step, out, err)
		}
	}

	// What eth0 has now, before the rename (and the link going down)
	// loses its routes and IPv6 addresses.
	var links []ipLink
	decode("read eth0", run("read eth0", "ip", "-j", "addr", "show", "dev", "eth0"), &links)
	if len(links) != 1 {
		t.Fatalf("DelayLink on %s: failed to read eth0: got %d links (already delayed?)", h.Name, len(links))
	}
	eth0 := links[0]
	var routes []ipRoute
	for _, family := range []string{"-4", "-6"} {
		var rs []ipRoute
		decode("read the routes of eth0", run("read the routes of eth0", "ip", "-j", family, "route", "show", "dev", "eth0"), &rs)
		for _, r := range rs {
			// Kernel routes come back with the addresses.
			if r.Protocol != "kernel" {
				r.family = family
				routes = append(routes, r)
			}
		}
	}
	// Routes through a gateway need the link routes to reach it first.
	slices.SortStableFunc(routes, func(a, b ipRoute) int {
		return boolInt(a.Gateway != "") - boolInt(b.Gateway != "")
	})
	wireMAC, err := randomMAC()
	if err != nil {
		t.Fatalf("DelayLink on %s: failed to make a MAC address for wire0: %v", h.Name, err)
	}
	mtu := strconv.Itoa(eth0.MTU)

	// Older kernels refuse to rename a link that is up.
	run("take eth0 down", "ip", "link", "set", "eth0", "down")
	run("rename eth0 to wire0", "ip", "link", "set", "eth0", "name", "wire0")
	run("remove the addresses of wire0", "ip", "addr", "flush", "dev", "wire0")
	// The new eth0 takes the old MAC address, so the neighbours' caches
	// stay right; wire0 gets another one, so that frames for the host
	// arrive on wire0 as "other host" frames, which the IP stack ignores.
	run("change the MAC address of wire0", "ip", "link", "set", "wire0", "address", wireMAC)
	run("create the veth pair eth0-wire1", "ip", "link", "add", "eth0", "address", eth0.Address, "mtu", mtu,
		"type", "veth", "peer", "name", "wire1", "mtu", mtu)
	for _, l := range []string{"wire0", "wire1"} {
		// The IP stack must neither answer on these links (an ARP
		// reply would lead peers around the delay) nor take packets
		// from them: no IPv6 (set before the link is up, so it never
		// gets a link-local address), no ARP, and rp_filter for the
		// IPv4 broadcasts (their sources are routed through eth0).
		// /proc/sys/net is that of the namespace sh runs in.
		run("keep the IP stack off "+l, "sh", "-ec", `
[ ! -e "/proc/sys/net/ipv6/conf/$1/disable_ipv6" ] || echo 1 > "/proc/sys/net/ipv6/conf/$1/disable_ipv6"
echo 1 > "/proc/sys/net/ipv4/conf/$1/rp_filter"
ip link set "$1" arp off
`, "sh", l)
	}
	for _, l := range []string{"wire0", "wire1", "eth0"} {
		run("bring "+l+" up", "ip", "link", "set", l, "up")
	}
	for _, a := range eth0.AddrInfo {
		if a.Scope == "link" {
			continue // a new one comes with the link (from the same MAC)
		}
		args := []string{"ip", "addr", "add", a.Local + "/" + strconv.Itoa(a.Prefixlen), "dev", "eth0"}
		if a.Broadcast != "" {
			args = append(args, "broadcast", a.Broadcast)
		}
		if a.Family == "inet6" {
			args = append(args, "nodad") // usable at once, as in setup
		}
		run("add address "+a.Local+" to the new eth0", args...)
	}
	for _, r := range routes {
		args := []string{"ip", r.family, "route", "add", r.Dst}
		if r.Gateway != "" {
			args = append(args, "via", r.Gateway)
		}
		args = append(args, "dev", "eth0")
		if r.Protocol != "" {
			args = append(args, "proto", r.Protocol)
		}
		if r.Scope != "" {
			args = append(args, "scope", r.Scope)
		}
		if r.Prefsrc != "" {
			args = append(args, "src", r.Prefsrc)
		}
		if r.Metric != 0 {
			args = append(args, "metric", strconv.Itoa(r.Metric))
		}
		if slices.Contains(r.Flags, "onlink") {
			args = append(args, "onlink")
		}
		run("add route "+r.Dst+" to the new eth0", args...)
	}

	p := h.Start(t, bin, []string{"--a", "wire0", "--b", "wire1", "--delay", d.String()}, nil)
	if err := Poll(delayReadyTimeout, 10*time.Millisecond, func() error {
		if p.Exited() {
			return errors.New("it exited")
		}
		if !strings.Contains(p.Log(), "forwarding") {
			return errors.New("it has not printed \"forwarding\"")
		}
		return nil
	}); err != nil {
		t.Fatalf("DelayLink on %s: failed to start the forwarder %s: %v; its log:\n%s", h.Name, p, err, p.Log())
	}
}

// ipLink is what DelayLink reads of `ip -j addr show`.
type ipLink struct {
	MTU      int    `json:"mtu"`
	Address  string `json:"address"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		Prefixlen int    `json:"prefixlen"`
		Broadcast string `json:"broadcast"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
}

// ipRoute is what DelayLink reads of `ip -j route show`.
type ipRoute struct {
	Dst      string   `json:"dst"`
	Gateway  string   `json:"gateway"`
	Protocol string   `json:"protocol"`
	Scope    string   `json:"scope"`
	Prefsrc  string   `json:"prefsrc"`
	Metric   int      `json:"metric"`
	Flags    []string `json:"flags"`
	family   string   // "-4" or "-6"
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() (string, error) {
	b := make(net.HardwareAddr, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[0] = b[0]&^0x01 | 0x02
	return b.String(), nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
