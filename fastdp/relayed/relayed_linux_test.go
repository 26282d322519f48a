package relayed

import (
	"strings"
	"testing"

	"github.com/google/nftables"
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
	return New(nftables.WithNetNSFd(fd))
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
	if _, b, err := c.Read(); err != nil || b != 0 {
		t.Fatalf("Read without a table = %d, %v", b, err)
	}
	netnstest.Run(t, ns, "nft", "add", "table", "ip", TableName) // the previous release's
	if err := c.Set("mesh-wg"); err != nil {
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
	if err := c.Set("mesh-wg"); err != nil {
		t.Fatal(err)
	}
	if after := handle(); after != before {
		t.Fatalf("an unchanged Set rewrote the table (handles %q, %q)", before, after)
	}
	// The release before the redirect rules: the counting chain alone.
	netnstest.Run(t, ns, "nft", "delete", "chain", "inet", TableName, chainOutput)
	if err := c.Set("mesh-wg"); err != nil {
		t.Fatal(err)
	}
	checkChains(t, ns, "mesh-wg")
	netnstest.Run(t, ns, "nft", "flush", "ruleset")
	if err := c.Set("mesh-wg"); err != nil {
		t.Fatal(err)
	}
	if out := netnstest.Run(t, ns, "nft", "list", "table", "inet", TableName); !strings.Contains(out, want) {
		t.Fatalf("Set did not restore a flushed table:\n%s", out)
	}
	if err := c.Set("other0"); err != nil {
		t.Fatal(err)
	}
	checkChains(t, ns, "other0")
	if out := netnstest.Run(t, ns, "nft", "list", "table", "inet", TableName); strings.Contains(out, "mesh-wg") {
		t.Fatalf("Set did not follow the new device:\n%s", out)
	}
	for _, bad := range []string{"", "a-name-that-is-too-long", "a\x00b"} {
		if err := c.Set(bad); err == nil || !strings.Contains(err.Error(), TableName) {
			t.Fatalf("Set(%q) = %v, want an error naming the table", bad, err)
		}
	}
	if _, b, err := c.Read(); err != nil || b != 0 {
		t.Fatalf("Read = %d, %v; want 0 with nothing forwarded", b, err)
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
		{chainForward, "hook forward", []string{`iifname "` + device + `" ` + oif + `counter name "relayed"`}},
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
