package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
	"golang.org/x/sys/unix"
)

func nsNFT(t *testing.T, path string, args ...string) (string, error) {
	t.Helper()
	return netnstest.Exec(path, append([]string{"nft"}, args...)...)
}

func natIn(t *testing.T, path string) *NAT {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("failed to open netns %s: %v", path, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return NewInNetNS(fd)
}

func TestSetProgramsRestoresAndRemoves(t *testing.T) {
	testnet.RequireRoot(t)
	ns := netnstest.New(t)
	n := natIn(t, ns)
	cfg := &Config{
		ClusterRange:  netip.MustParsePrefix("10.32.0.0/12"),
		Masquerade:    true,
		NoMasquerade:  []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
		OverlayDevice: "mesh-wg",
		OverlayIP:     netip.MustParseAddr("10.32.0.1"),
		Nodes:         []netip.Addr{netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")},
	}
	if err := n.Set(cfg); err != nil {
		t.Fatal(err)
	}
	list := func() string {
		t.Helper()
		out, err := nsNFT(t, ns, "-a", "list", "table", "ip", TableName)
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		return out
	}
	first := list()
	for _, want := range []string{
		"type nat hook postrouting priority srcnat - 10; policy accept;",
		// No port range: a bare "snat to" keeps the ports.
		`oifname "mesh-wg" ip saddr != 10.32.0.0/12 snat to 10.32.0.1 comment`,
		"elements = { 192.0.2.11, 192.0.2.12 }",
		"ip saddr 10.32.0.0/12 ip daddr @nodes masquerade",
		"ip daddr 10.32.0.0/12 return",
		"ip daddr 192.168.0.0/16 return",
		"ip saddr 10.32.0.0/12 masquerade",
	} {
		if !strings.Contains(first, want) {
			t.Errorf("table lacks %q:\n%s", want, first)
		}
	}
	// The nodes come before the exemptions, the exemptions before the
	// masquerade.
	if strings.Index(first, "@nodes masquerade") > strings.Index(first, "192.168.0.0/16 return") ||
		strings.Index(first, "ip saddr 10.32.0.0/12 masquerade") < strings.Index(first, "192.168.0.0/16 return") {
		t.Errorf("masquerade precedes the exemptions:\n%s", first)
	}

	// Unchanged: nothing rewritten (rule handles stay).
	if err := n.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if again := list(); again != first {
		t.Errorf("an unchanged Set rewrote the table:\nbefore:\n%s\nafter:\n%s", first, again)
	}
	// Found as wanted at the current generation: the next unchanged Set
	// reads nothing, and the tampering below must still be seen.
	if _, _, settled := n.settled.Check(n.netns, fmt.Sprintf("%+v", *cfg)); !settled {
		t.Error("an unchanged Set did not note the table settled")
	}

	// Deleted or tampered with: restored.
	if out, err := nsNFT(t, ns, "delete", "table", "ip", TableName); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := n.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if got := list(); !strings.Contains(got, "ip saddr 10.32.0.0/12 masquerade") {
		t.Errorf("deleted table not restored:\n%s", got)
	}
	if out, err := nsNFT(t, ns, "flush", "chain", "ip", TableName, chainName); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := n.Set(cfg); err != nil {
		t.Fatal(err)
	}
	if got := list(); !strings.Contains(got, "snat to 10.32.0.1") {
		t.Errorf("flushed chain not restored:\n%s", got)
	}

	// Another node: the set follows.
	more := *cfg
	more.Nodes = append(slices.Clone(cfg.Nodes), netip.MustParseAddr("192.0.2.13"))
	if err := n.Set(&more); err != nil {
		t.Fatal(err)
	}
	if got := list(); !strings.Contains(got, "elements = { 192.0.2.11, 192.0.2.12,") || !strings.Contains(got, "192.0.2.13 }") {
		t.Errorf("node set not updated:\n%s", got)
	}

	// Masquerade off: only the overlay rule and the nodes' stay.
	off := *cfg
	off.Masquerade = false
	if err := n.Set(&off); err != nil {
		t.Fatal(err)
	}
	if got := list(); strings.Contains(got, "ip saddr 10.32.0.0/12 masquerade") || !strings.Contains(got, "@nodes masquerade") ||
		!strings.Contains(got, "snat to 10.32.0.1") {
		t.Errorf("with masquerade off:\n%s", got)
	}

	// Nothing to do: no table.
	off.OverlayIP = netip.Addr{}
	off.Nodes = nil
	if err := n.Set(&off); err != nil {
		t.Fatal(err)
	}
	if out, err := nsNFT(t, ns, "list", "table", "ip", TableName); err == nil {
		t.Errorf("table still there with nothing to translate:\n%s", out)
	}
	if err := n.Set(&off); err != nil {
		t.Fatalf("Set without a table and nothing to do: %v", err)
	}

	if err := n.Set(cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := n.Remove(); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if out, err := nsNFT(t, ns, "list", "table", "ip", TableName); err == nil {
		t.Errorf("table still there after Remove:\n%s", out)
	}
}

func TestValidate(t *testing.T) {
	cr := netip.MustParsePrefix("10.32.0.0/12")
	many := make([]netip.Prefix, MaxNoMasquerade+1)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(i), 0}), 24)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for none
	}{
		{"ok", Config{ClusterRange: cr, Masquerade: true, OverlayDevice: "mesh-wg", OverlayIP: netip.MustParseAddr("10.32.0.1")}, ""},
		{"no overlay IP", Config{ClusterRange: cr, Masquerade: true}, ""},
		{"no cluster range", Config{Masquerade: true}, "cluster range"},
		{"IPv6 cluster range", Config{ClusterRange: netip.MustParsePrefix("fd00::/64")}, "cluster range"},
		{"host bits", Config{ClusterRange: netip.MustParsePrefix("10.32.0.1/12")}, "cluster range"},
		{"unmasked exemption", Config{ClusterRange: cr, NoMasquerade: []netip.Prefix{netip.MustParsePrefix("192.168.1.1/16")}}, "192.168.1.1/16"},
		{"too many exemptions", Config{ClusterRange: cr, NoMasquerade: many}, "at most"},
		{"overlay outside range", Config{ClusterRange: cr, OverlayDevice: "mesh-wg", OverlayIP: netip.MustParseAddr("10.64.0.1")}, "outside"},
		{"IPv4-mapped node", Config{ClusterRange: cr, Nodes: []netip.Addr{netip.MustParseAddr("::ffff:192.0.2.1")}}, "neither IPv4 nor IPv6"},
		{"overlay without device", Config{ClusterRange: cr, OverlayIP: netip.MustParseAddr("10.32.0.1")}, "overlay device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestSetIPv6: with an IPv6 cluster range the ip6 table masquerades IPv6
// pods leaving the cluster range and gives traffic entering the overlay
// device the IPv6 overlay address; without one there is no ip6 table, and
// Remove deletes both.
func TestSetIPv6(t *testing.T) {
	testnet.RequireRoot(t)
	ns := netnstest.New(t)
	n := natIn(t, ns)
	v4 := Config{
		ClusterRange:  netip.MustParsePrefix("10.32.0.0/12"),
		Masquerade:    true,
		OverlayDevice: "mesh-wg",
		OverlayIP:     netip.MustParseAddr("10.32.0.1"),
	}
	if err := n.Set(&v4); err != nil {
		t.Fatal(err)
	}
	if out, err := nsNFT(t, ns, "list", "table", "ip6", TableName); err == nil {
		t.Fatalf("an IPv4-only config made an ip6 table:\n%s", out)
	}
	dual := v4
	dual.ClusterRange6 = netip.MustParsePrefix("fd32::/48")
	dual.OverlayIP6 = netip.MustParseAddr("fd32::1")
	// An underlay of both families: each table takes its own.
	dual.Nodes = []netip.Addr{netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("fd98::2")}
	if err := n.Set(&dual); err != nil {
		t.Fatal(err)
	}
	out, err := nsNFT(t, ns, "list", "table", "ip6", TableName)
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	for _, want := range []string{
		"type nat hook postrouting priority srcnat - 10; policy accept;",
		`oifname "mesh-wg" ip6 saddr != fd32::/48 snat to fd32::1 comment`,
		"ip6 daddr fd32::/48 return",
		"ip6 saddr fd32::/48 masquerade",
		"ip6 saddr fd32::/48 ip6 daddr @nodes masquerade",
		"elements = { fd98::2 }",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ip6 table lacks %q:\n%s", want, out)
		}
	}
	if out4, err := nsNFT(t, ns, "list", "table", "ip", TableName); err != nil || !strings.Contains(out4, "ip saddr 10.32.0.0/12 masquerade") ||
		!strings.Contains(out4, "elements = { 192.0.2.12 }") {
		t.Errorf("the ip table beside the ip6 one: %v\n%s", err, out4)
	}
	noMasq := dual
	noMasq.Masquerade = false
	if err := n.Set(&noMasq); err != nil {
		t.Fatal(err)
	}
	if out, _ := nsNFT(t, ns, "list", "table", "ip6", TableName); strings.Contains(out, "ip6 saddr fd32::/48 masquerade") ||
		!strings.Contains(out, "snat to fd32::1") || !strings.Contains(out, "@nodes masquerade") {
		t.Errorf("without masquerade the ip6 table keeps the overlay and nodes rules only:\n%s", out)
	}
	for _, bad := range []Config{
		{ClusterRange: v4.ClusterRange, ClusterRange6: netip.MustParsePrefix("10.64.0.0/12")},
		{ClusterRange: v4.ClusterRange, ClusterRange6: dual.ClusterRange6, OverlayIP6: netip.MustParseAddr("fd33::1"), OverlayDevice: "mesh-wg"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate accepts %+v", bad)
		}
	}
	// IPv6 only: no IPv4 range, so no ip table.
	only6 := Config{ClusterRange6: dual.ClusterRange6, OverlayIP6: dual.OverlayIP6, OverlayDevice: "mesh-wg", Masquerade: true}
	if err := n.Set(&only6); err != nil {
		t.Fatal(err)
	}
	if out, err := nsNFT(t, ns, "list", "table", "ip", TableName); err == nil {
		t.Errorf("an IPv6-only config kept the ip table:\n%s", out)
	}
	if out, _ := nsNFT(t, ns, "list", "table", "ip6", TableName); !strings.Contains(out, "ip6 saddr fd32::/48 masquerade") {
		t.Errorf("IPv6-only ip6 table:\n%s", out)
	}
	if err := n.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"ip", "ip6"} {
		if out, err := nsNFT(t, ns, "list", "table", fam, TableName); err == nil {
			t.Errorf("table %s %s left after Remove:\n%s", fam, TableName, out)
		}
	}
}
