package isolation

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	"golang.org/x/sys/unix"
)

func tablesIn(t testing.TB, path string) *Tables {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return NewInNetNS(fd)
}

// TestTablesApplyAndIntact programs both tables, reads them back with nft,
// and checks that Intact notices a flushed ruleset, a flushed chain and a
// flushed set, and that a new Apply restores them with their counters.
func TestTablesApplyAndIntact(t *testing.T) {
	testnet.RequireRoot(t)
	ns := netnstest.New(t)
	tb := tablesIn(t, ns)
	cfg := testConfig(3)
	cfg.Ports[2].Legacy = true
	if err := tb.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	out := netnstest.Run(t, ns, "nft", "list", "ruleset")
	for _, want := range []string{
		"table bridge mesh-isolation", "table inet mesh-isolation",
		`iifname != "vmesh*" accept`,
		`iifname . ether saddr . ip saddr != @pods counter name "spoofed" drop`,
		`udp sport 67 counter name "host-config" drop`,
		`arp htype 1 arp ptype ip arp hlen 6 arp plen 4`,
		`ether type ip6 counter name "ipv6" drop`,
		`"vmesh00000001" . 0a:58:0a:20:00:0b . 10.32.0.11`,
		`ip saddr @cluster iifname != @trusted counter name "underlay-spoofed" drop`,
		`iifname "vmesh*" oifname "vmesh*" iifname != @legacy oifname != @legacy counter name "pod-to-pod" drop`,
		`elements = { "vmesh00000002" }`,
		`iifname . oifname @hairpin accept`,
		`meta mark & 0x00100000 != 0x00000000 accept`,
		`iifname "mesh" ct status dnat meta mark set meta mark | 0x00100000`,
		`"vmesh00000001" . "vmesh00000001"`,
		`oifname "mesh" icmp type redirect drop`,
		"10.32.0.0/12",
		`"mesh-wg"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("live ruleset lacks %q:\n%s", want, out)
		}
	}
	if ok, err := tb.Intact(); err != nil || !ok {
		t.Fatalf("Intact right after Apply = %v, %v\n%s", ok, err, out)
	}
	// Found whole, at a generation no transaction has moved since: the
	// next check is that one round trip. A change of another table moves
	// it, and the check then compares again and still finds them whole.
	noted := func() bool {
		_, _, settled := tb.intact.Check(tb.netns, tb.applied.String())
		return settled
	}
	if !noted() {
		t.Fatal("Intact found the tables whole but did not note the ruleset generation")
	}
	netnstest.Run(t, ns, "nft", "add", "table", "ip", "someone-else")
	if ok, err := tb.Intact(); err != nil || !ok || !noted() {
		t.Fatalf("Intact after a change of another table = %v, %v (generation noted: %v)", ok, err, noted())
	}
	for _, mess := range [][]string{
		{"nft", "flush", "ruleset"},
		{"nft", "flush", "chain", "bridge", TableName, "prerouting"},
		{"nft", "flush", "chain", "bridge", TableName, "forward"},
		{"nft", "flush", "chain", "inet", TableName, "output"},
		{"nft", "flush", "chain", "inet", TableName, "bridged-dnat"},
		{"nft", "flush", "set", "bridge", TableName, "pods"},
		{"nft", "delete", "table", "inet", TableName},
	} {
		netnstest.Run(t, ns, mess...)
		if ok, err := tb.Intact(); err != nil || ok {
			t.Errorf("Intact after %v = %v, %v; want false", mess, ok, err)
		}
		if err := tb.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		if ok, err := tb.Intact(); err != nil || !ok {
			t.Errorf("Intact after restoring from %v = %v, %v", mess, ok, err)
		}
		// The next mess comes after a check that noted the generation:
		// it must be seen all the same.
		if !noted() {
			t.Errorf("after restoring from %v: generation not noted", mess)
		}
	}
	// Ports coming and going: an update of the set; other changes, or a
	// set gone under it, a whole apply.
	more := testConfig(5)
	less := testConfig(2)
	// From less: port 0 goes, port 1 gets another address and MAC, ports
	// 2 and 3 come.
	moved := testConfig(4)
	moved.Ports = moved.Ports[1:]
	moved.Ports[0].Addr = netip.MustParseAddr("10.32.0.99")
	moved.Ports[0].MAC = MACFor(moved.Ports[0].Addr)
	if err := tb.Apply(less); err != nil {
		t.Fatal(err)
	}
	handle := func() string {
		out, err := exec.Command("nsenter", "--net="+ns, "--", "nft", "-a", "list", "table", "bridge", TableName).CombinedOutput()
		if err != nil {
			return "" // deleted
		}
		first, _, _ := strings.Cut(string(out), "\n")
		return first // "table bridge mesh-isolation { # handle N"
	}
	for _, step := range []struct {
		name        string
		cfg         Config
		mess        []string
		incremental bool // the table is kept, only the set changes
	}{
		{"add-ports", more, nil, true},
		{"remove-ports", less, nil, true},
		{"replace-ports", moved, nil, true},
		{"after-outside-delete", more, []string{"nft", "delete", "table", "bridge", TableName}, false},
		{"other-range", Config{Bridge: "mesh", PortPrefix: "vmesh", ClusterRange: netip.MustParsePrefix("10.64.0.0/16"), Ports: less.Ports}, nil, false},
	} {
		if step.mess != nil {
			netnstest.Run(t, ns, step.mess...)
		}
		before := handle()
		if err := tb.Update(step.cfg); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if kept := handle() == before; kept != step.incremental {
			t.Errorf("%s: table kept = %v (%q, then %q), want %v", step.name, kept, before, handle(), step.incremental)
		}
		if ok, err := tb.Intact(); err != nil || !ok {
			t.Errorf("%s: Intact = %v, %v", step.name, ok, err)
		}
		out := netnstest.Run(t, ns, "nft", "list", "ruleset")
		for _, p := range step.cfg.Ports {
			if !strings.Contains(out, p.Addr.String()) {
				t.Errorf("%s: port %s missing:\n%s", step.name, p.Addr, out)
			}
		}
		if strings.Count(out, `"vmesh0000`) < len(step.cfg.Ports) || (len(step.cfg.Ports) == 2 && strings.Contains(out, "10.32.0.13")) {
			t.Errorf("%s: wrong ports:\n%s", step.name, out)
		}
		if step.name == "replace-ports" && (strings.Contains(out, `"vmesh00000000"`) || strings.Contains(out, "10.32.0.11")) {
			t.Errorf("%s: the port that went, or the old address of the one that changed, is still there:\n%s", step.name, out)
		}
		if !strings.Contains(out, step.cfg.ClusterRange.String()) {
			t.Errorf("%s: cluster range %s missing:\n%s", step.name, step.cfg.ClusterRange, out)
		}
	}
	if err := tb.Remove(); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, ns, "nft", "list", "ruleset"); strings.Contains(out, TableName) {
		t.Errorf("tables left after Remove:\n%s", out)
	}
}

// TestTablesDualStack: with an IPv6 cluster range the tables admit each
// pod's own IPv6 address and neighbour discovery, and still drop router
// advertisements, redirects and spoofed sources; without one they are
// those of an IPv4-only mesh, word for word.
func TestTablesDualStack(t *testing.T) {
	testnet.RequireRoot(t)
	ns := netnstest.New(t)
	tb := tablesIn(t, ns)
	v4only := testConfig(2)
	if err := tb.Apply(v4only); err != nil {
		t.Fatal(err)
	}
	before := netnstest.Run(t, ns, "nft", "list", "ruleset")
	for _, absent := range []string{"pods6", "ports6", "cluster6", "icmpv6"} {
		if strings.Contains(before, absent) {
			t.Errorf("IPv4-only tables mention %q:\n%s", absent, before)
		}
	}

	cfg := testConfig(2)
	cfg.ClusterRange6 = netip.MustParsePrefix("fd32::/48")
	cfg.Ports[0].Addr6 = netip.MustParseAddr("fd32::a")
	if err := tb.Update(cfg); err != nil {
		t.Fatal(err)
	}
	out := netnstest.Run(t, ns, "nft", "list", "ruleset")
	for _, want := range []string{
		`icmpv6 type nd-router-advert counter name "ipv6" drop`,
		`icmpv6 type nd-redirect counter name "ipv6" drop`,
		`counter name "spoofed" drop`,
		`"vmesh00000000" . 0a:58:0a:20:00:0a . fd32::a`,
		`ip6 saddr @cluster6 iifname != @trusted counter name "underlay-spoofed" drop`,
		`elements = { fd32::/48 }`,
		`iifname . ether saddr . ip6 saddr @pods6 accept`,
		`icmpv6 type nd-neighbor-advert counter name "spoofed" drop`,
		`icmpv6 type nd-neighbor-solicit ip6 saddr :: iifname . ether saddr @ports6 accept`,
		`ip6 saddr != fe80::/10 ip6 saddr != :: counter name "spoofed" drop`,
		`ether type ip6 counter name "ipv6" drop`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dual-stack ruleset lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "vmesh00000001\" . 0a:58:0a:20:00:0b . fd32") {
		t.Errorf("a port without an IPv6 address got one:\n%s", out)
	}
	if ok, err := tb.Intact(); err != nil || !ok {
		t.Errorf("Intact after a dual-stack Apply = %v, %v", ok, err)
	}
	// IPv6 only: no IPv4 range, a port with an IPv6 address alone.
	only6 := Config{Bridge: "mesh", PortPrefix: "vmesh", Trusted: []string{"mesh-wg"}, ClusterRange6: cfg.ClusterRange6}
	a6 := netip.MustParseAddr("fd32::b")
	only6.Ports = []Port{{Name: "vmesh000000aa", MAC: MACFor6(a6), Addr6: a6}}
	if err := tb.Update(only6); err != nil {
		t.Fatal(err)
	}
	out = netnstest.Run(t, ns, "nft", "list", "ruleset")
	if !strings.Contains(out, `"vmesh000000aa" . 0a:59:00:00:00:0b . fd32::b`) || strings.Contains(out, "set cluster {") && strings.Contains(out, "10.32.0.0/12") {
		t.Errorf("IPv6-only tables:\n%s", out)
	}
	if ok, err := tb.Intact(); err != nil || !ok {
		t.Errorf("Intact after an IPv6-only Apply = %v, %v", ok, err)
	}

	if err := tb.Update(v4only); err != nil {
		t.Fatal(err)
	}
	if after := netnstest.Run(t, ns, "nft", "list", "ruleset"); after != before {
		t.Errorf("back to IPv4 only, the tables differ:\n%s\nwant:\n%s", after, before)
	}
}
