package relayed

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	"golang.org/x/sys/unix"
)

func counterIn(t *testing.T, path string) *Counter {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return NewInNetNS(fd)
}

// Set programs one rule counting forwarding from the device back into it
// and two dropping the ICMP and ICMPv6 redirects sent out of it, in an inet
// table (both families), replaces the previous release's ip table and
// completes a table of the release without the redirect rules, leaves an
// unchanged table alone, restores a flushed one, follows a new device
// name, and refuses a bad one; Remove deletes the table.
func TestCounterSetReadRemove(t *testing.T) {
	testnet.RequireRoot(t)
	ns := netnstest.New(t)
	c := counterIn(t, ns)
	if n, err := c.Read(); err != nil || n.Bytes != 0 || n.Peers != nil {
		t.Fatalf("Read without a table = %+v, %v", n, err)
	}
	netnstest.Run(t, ns, "nft", "add", "table", "ip", TableName) // the previous release's
	if err := c.Set("mesh-wg", nil); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, ns, "nft", "list", "tables"); strings.Contains(out, "table ip "+TableName) {
		t.Fatalf("the previous release's table is left after Set:\n%s", out)
	}
	want := `iifname "mesh-wg" oifname "mesh-wg" counter name "relayed"`
	checkChains(t, ns, "mesh-wg")
	handle := func() string {
		out := netnstest.Run(t, ns, "nft", "-a", "list", "table", "inet", TableName)
		var hs []string
		for _, l := range strings.Split(out, "\n") {
			if _, h, ok := strings.Cut(l, "# handle"); ok {
				hs = append(hs, h)
			}
		}
		return strings.Join(hs, ",")
	}
	before := handle()
	if err := c.Set("mesh-wg", nil); err != nil {
		t.Fatal(err)
	}
	if after := handle(); after != before {
		t.Fatalf("an unchanged Set rewrote the table (handles %q, %q)", before, after)
	}
	// The release before the redirect rules: the counting chain alone.
	netnstest.Run(t, ns, "nft", "delete", "chain", "inet", TableName, chainOutput)
	if err := c.Set("mesh-wg", nil); err != nil {
		t.Fatal(err)
	}
	checkChains(t, ns, "mesh-wg")
	netnstest.Run(t, ns, "nft", "flush", "ruleset")
	if err := c.Set("mesh-wg", nil); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, ns, "nft", "list", "table", "inet", TableName); !strings.Contains(out, want) {
		t.Fatalf("Set did not restore a flushed table:\n%s", out)
	}
	if err := c.Set("other0", nil); err != nil {
		t.Fatal(err)
	}
	checkChains(t, ns, "other0")
	if out := netnstest.Run(t, ns, "nft", "list", "table", "inet", TableName); strings.Contains(out, "mesh-wg") {
		t.Fatalf("Set did not follow the new device:\n%s", out)
	}
	for _, bad := range []string{"", "a-name-that-is-too-long", "a\x00b"} {
		if err := c.Set(bad, nil); err == nil || !strings.Contains(err.Error(), TableName) {
			t.Fatalf("Set(%q) = %v, want an error naming the table", bad, err)
		}
	}
	if n, err := c.Read(); err != nil || n.Bytes != 0 {
		t.Fatalf("Read = %+v, %v; want 0 with nothing forwarded", n, err)
	}
	netnstest.Run(t, ns, "nft", "add", "table", "ip", TableName)
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, ns, "nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Fatalf("tables left after Remove:\n%s", out)
	}
	if out, err := netnstest.Exec(ns, "nft", "list", "table", "inet", TableName); err == nil {
		t.Fatalf("table still there after Remove:\n%s", out)
	}
	if err := c.Remove(); err != nil {
		t.Fatalf("Remove of an absent table: %v", err)
	}
}

// checkChains fails t unless the table has, for device, the counting rule
// in a forward chain and the two redirect drops in an output chain.
func checkChains(t *testing.T, ns, device string) {
	t.Helper()
	oif := `oifname "` + device + `" `
	for _, w := range []struct {
		chain, hook string
		rules       []string
	}{
		{chainForward, "hook forward", []string{`iifname "` + device + `" ` + oif + `counter name "relayed"`,
			`iifname "` + device + `" ` + oif + `ip saddr vmap @src4`, `iifname "` + device + `" ` + oif + `ip6 saddr vmap @src6`}},
		{chainOutput, "hook output", []string{oif + "icmp type redirect drop", oif + "icmpv6 type nd-redirect drop"}},
	} {
		out := netnstest.Run(t, ns, "nft", "list", "chain", "inet", TableName, w.chain)
		if !strings.Contains(out, w.hook) {
			t.Fatalf("chain %s is not of %s:\n%s", w.chain, w.hook, out)
		}
		for _, r := range w.rules {
			if !strings.Contains(out, r) {
				t.Fatalf("chain %s lacks %q:\n%s", w.chain, r, out)
			}
		}
	}
}

// A relay's counters per peer, on real forwarding: ns "relay" forwards
// what ns "peers" sends it back out of the same veth (as a relay forwards
// from its WireGuard device back into it), and each packet is counted for
// the source whose prefixes hold its source address, the longest prefix
// deciding (a held /32 inside another peer's range), in both families; a
// packet from nobody's ranges counts in the total alone. Then a change of
// peers and ranges updates the table in place: the total and the counter
// of the peer that stays keep their counts, the counter of the peer that
// went is deleted, and an unchanged Set changes nothing.
func TestCounterPerPeer(t *testing.T) {
	testnet.RequireRoot(t)
	relay, peers := netnstest.New(t), netnstest.New(t)
	netnstest.Run(t, relay, "ip", "link", "add", "r0", "type", "veth", "peer", "name", "p0")
	netnstest.MoveLink(t, relay, "p0", peers)
	for _, c := range [][]string{
		{"sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
			"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"},
		{"ip", "addr", "add", "192.168.77.1/24", "dev", "r0"},
		{"ip", "addr", "add", "fd77::1/64", "dev", "r0", "nodad"},
		{"ip", "link", "set", "r0", "up"},
		{"ip", "route", "add", "10.99.0.0/16", "via", "192.168.77.2"},
		{"ip", "route", "add", "fd99::/64", "via", "fd77::2"},
	} {
		netnstest.Run(t, relay, c...)
	}
	srcs := []string{"10.32.1.1", "10.33.0.9", "10.32.5.7", "10.40.0.1"}
	for _, c := range [][]string{
		{"ip", "addr", "add", "192.168.77.2/24", "dev", "p0"},
		{"ip", "addr", "add", "fd77::2/64", "dev", "p0", "nodad"},
		{"ip", "addr", "add", "fd32::5/128", "dev", "p0", "nodad"},
		{"ip", "link", "set", "p0", "up"},
		{"ip", "route", "add", "10.99.0.0/16", "via", "192.168.77.1"},
		{"ip", "route", "add", "fd99::/64", "via", "fd77::1"},
	} {
		netnstest.Run(t, peers, c...)
	}
	for _, a := range srcs {
		netnstest.Run(t, peers, "ip", "addr", "add", a+"/32", "dev", "p0")
	}
	c := counterIn(t, relay)
	pp := netip.MustParsePrefix
	sources := []Source{
		{"host1", []netip.Prefix{pp("10.32.0.0/16"), pp("fd32::/64")}},
		{"host2", []netip.Prefix{pp("10.33.0.0/16"), pp("10.32.5.7/32")}},
	}
	// elem is an element of a map as nft lists it.
	elem := func(addrs, peer string) string {
		return addrs + ` comment "` + peerID(peer) + `" : jump ` + peerID(peer)
	}
	if err := c.Set("r0", sources); err != nil {
		t.Fatal(err)
	}
	out := netnstest.Run(t, relay, "nft", "list", "table", "inet", TableName)
	for _, w := range []string{
		elem("10.32.0.0-10.32.5.6", "host1"),
		elem("10.32.5.7", "host2"),
		elem("10.32.5.8-10.32.255.255", "host1"),
		elem("10.33.0.0/16", "host2"),
		elem("fd32::/64", "host1"),
		`chain ` + peerID("host1") + ` {`,
		`counter name "` + peerID("host2") + `"`,
	} {
		if !strings.Contains(out, w) {
			t.Fatalf("table lacks %q:\n%s", w, out)
		}
	}
	// Three echo requests (84 bytes each: no answer comes) from each
	// source, through the relay and back out of r0 towards 10.99.0.1,
	// which nobody has.
	const echo, echo6 = 84, 104
	send := func(src string) {
		args := []string{"ping", "-c", "3", "-i", "0.2", "-W", "0.2", "-I", src, "10.99.0.1"}
		if strings.Contains(src, ":") {
			args[len(args)-1] = "fd99::1"
		}
		netnstest.Exec(peers, args...) // no answers: ping fails
	}
	for _, a := range append(srcs, "fd32::5") {
		send(a)
	}
	n, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counts %+v", n)
	want := map[string]uint64{"host1": 3*echo + 3*echo6, "host2": 6 * echo}
	for name, b := range want {
		if n.Peers[name] != b {
			t.Errorf("%s: %d bytes counted, want %d (%+v)", name, n.Peers[name], b, n)
		}
	}
	if wantTotal := uint64(12*echo + 3*echo6); n.Bytes != wantTotal {
		t.Errorf("total %d bytes, want %d", n.Bytes, wantTotal)
	}

	// host1 goes, host2 gets host1's IPv4 range, host3 comes.
	handles := func() string {
		out := netnstest.Run(t, relay, "nft", "-a", "list", "chain", "inet", TableName, chainForward)
		_, h, _ := strings.Cut(out, "# handle")
		return h
	}
	before := handles()
	sources = []Source{
		{"host2", []netip.Prefix{pp("10.33.0.0/16"), pp("10.32.0.0/16")}},
		{"host3", []netip.Prefix{pp("fd32::/64")}},
	}
	if err := c.Set("r0", sources); err != nil {
		t.Fatal(err)
	}
	if after := handles(); after != before {
		t.Fatalf("a change of peers recreated the table")
	}
	out = netnstest.Run(t, relay, "nft", "list", "table", "inet", TableName)
	if strings.Contains(out, peerID("host1")) {
		t.Fatalf("host1's chain or counter is left:\n%s", out)
	}
	if !strings.Contains(out, elem("10.32.0.0/15", "host2")) || !strings.Contains(out, elem("fd32::/64", "host3")) {
		t.Fatalf("the maps were not updated:\n%s", out)
	}
	send("10.32.1.1")
	send("fd32::5")
	m, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counts %+v", m)
	if m.Peers["host2"] != n.Peers["host2"]+3*echo || m.Peers["host3"] != 3*echo6 || m.Bytes != n.Bytes+3*echo+3*echo6 {
		t.Errorf("after the update: %+v, want host2 %d, host3 %d, total %d", m, n.Peers["host2"]+3*echo, 3*echo6, n.Bytes+3*echo+3*echo6)
	}
	if _, ok := m.Peers["host1"]; ok {
		t.Errorf("a peer that went is still read: %+v", m)
	}
	writes := c.writes
	if err := c.Set("r0", sources); err != nil {
		t.Fatal(err)
	}
	if c.writes != writes {
		t.Fatal("an unchanged Set wrote to the table")
	}
	// Found as wanted at the current generation: the next unchanged Set
	// reads nothing, and the deletions below must still be seen.
	if _, _, settled := c.settled.Check(c.netns, settledKey("r0", makePlan(sources))); !settled {
		t.Fatal("an unchanged Set did not note the table settled")
	}
	// A peer's chain deleted by hand comes back, with its counter anew.
	netnstest.Run(t, relay, "nft", "flush", "map", "inet", TableName, map6)
	netnstest.Run(t, relay, "nft", "delete", "chain", "inet", TableName, peerID("host3"))
	if err := c.Set("r0", sources); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, relay, "nft", "list", "table", "inet", TableName); !strings.Contains(out, elem("fd32::/64", "host3")) ||
		!strings.Contains(out, "chain "+peerID("host3")) {
		t.Fatalf("Set did not restore host3's chain and element:\n%s", out)
	}
}
