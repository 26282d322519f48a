package vmtest

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is one entry read back from a newc archive.
type cpioEntry struct {
	name         string
	mode         uint32
	rmaj, rmin   uint32
	data         string
	headerOffset int
}

// readCPIO parses a newc archive strictly (magic, hex fields, 4-byte
// alignment of names and data), independently of the writer.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatalf("bad header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off%4 != 0 {
			t.Fatalf("entry at %d is not 4-byte aligned", off)
		}
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic %q at %d", b[off:off+6], off)
		}
		mode, size, rmaj, rmin, nameSize := field(1), field(6), field(9), field(10), field(11)
		nameStart := off + 110
		name := string(b[nameStart : nameStart+int(nameSize)-1])
		if b[nameStart+int(nameSize)-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		dataStart := align(nameStart + int(nameSize))
		data := string(b[dataStart : dataStart+int(size)])
		if name == "TRAILER!!!" {
			if end := align(dataStart + int(size)); end != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-end)
			}
			return out
		}
		out = append(out, cpioEntry{name: name, mode: mode, rmaj: rmaj, rmin: rmin, data: data, headerOffset: off})
		off = align(dataStart + int(size))
	}
}

func TestCPIO(t *testing.T) {
	var buf bytes.Buffer
	c := NewCPIO(&buf)
	steps := []error{
		c.File("/usr/bin/tool", 0o755, []byte("12345")), // 5 bytes: padded
		c.Symlink("/bin", "usr/bin"),
		c.CharDev("/dev/console", 0o600, 5, 1),
		c.Dir("/usr", 0o755), // already there as a parent: not repeated
		c.File("/init", 0o755, []byte("#!/bin/sh\n")),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := c.File("usr/bin/tool", 0o644, nil); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("a duplicate entry: err = %v, want an error", err)
	}
	if err := c.File("/", 0o644, nil); err == nil {
		t.Fatal("an empty path was accepted")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	var names []string
	for _, e := range got {
		names = append(names, fmt.Sprintf("%s %o", e.name, e.mode))
	}
	want := []string{"usr 40755", "usr/bin 40755", "usr/bin/tool 100755", "bin 120777", "dev 40755", "dev/console 20600", "init 100755"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries:\n%v\nwant\n%v", names, want)
	}
	if got[2].data != "12345" || got[3].data != "usr/bin" || got[6].data != "#!/bin/sh\n" {
		t.Fatalf("contents: %q %q %q", got[2].data, got[3].data, got[6].data)
	}
	if got[5].rmaj != 5 || got[5].rmin != 1 {
		t.Fatalf("console device %d:%d, want 5:1", got[5].rmaj, got[5].rmin)
	}
}

func TestParseDepends(t *testing.T) {
	tests := []struct {
		name, modinfo string
		want          []string
	}{
		{"several, dashes normalized", "license=GPL\x00depends=udp_tunnel,ip6_udp_tunnel,curve25519-x86_64\x00vermagic=6.1\x00", []string{"udp_tunnel", "ip6_udp_tunnel", "curve25519_x86_64"}},
		{"empty", "depends=\x00name=veth\x00", nil},
		{"absent", "name=x\x00", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseDepends([]byte(tt.modinfo)); !slices.Equal(got, tt.want) {
				t.Fatalf("parseDepends = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLoadOrder(t *testing.T) {
	mods := func(deps map[string][]string) map[string]*Module {
		m := map[string]*Module{}
		for n, d := range deps {
			m[n] = &Module{Name: n, Depends: append([]string{}, d...)}
		}
		return m
	}
	names := func(ms []*Module) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Name)
		}
		return out
	}
	wg := map[string][]string{
		"wireguard":             {"ip6_udp_tunnel", "udp_tunnel", "curve25519-x86_64", "libchacha20poly1305"},
		"ip6_udp_tunnel":        {},
		"udp_tunnel":            {},
		"curve25519_x86_64":     {"libcurve25519_generic"},
		"libchacha20poly1305":   {"libchacha", "libpoly1305"},
		"libcurve25519_generic": {},
		"libchacha":             {},
		"libpoly1305":           {},
		"veth":                  {},
	}
	t.Run("dependencies first, each once", func(t *testing.T) {
		got, err := LoadOrder(mods(wg), "veth", "wireguard", "udp_tunnel")
		if err != nil {
			t.Fatal(err)
		}
		n := names(got)
		if len(n) != len(wg) {
			t.Fatalf("order %v has %d modules, want %d", n, len(n), len(wg))
		}
		pos := map[string]int{}
		for i, x := range n {
			pos[x] = i
		}
		for m, deps := range wg {
			for _, d := range deps {
				if pos[moduleName(d)] > pos[m] {
					t.Fatalf("%s loads before its dependency %s: %v", m, d, n)
				}
			}
		}
	})
	t.Run("missing", func(t *testing.T) {
		m := mods(map[string][]string{"a": {"b"}})
		if _, err := LoadOrder(m, "a"); err == nil || !strings.Contains(err.Error(), `"b", needed by a`) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("cycle", func(t *testing.T) {
		m := mods(map[string][]string{"a": {"b"}, "b": {"a"}})
		if _, err := LoadOrder(m, "a"); err == nil || !strings.Contains(err.Error(), "cycle") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestParseLDD(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffd2a5f6000)
	libmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f1b1c2a1000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1b1c0c0000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f1b1c2e1000)
`
	got, err := parseLDD(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/x86_64-linux-gnu/libmnl.so.0", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if !slices.Equal(got, want) {
		t.Fatalf("parseLDD = %v, want %v", got, want)
	}
	if _, err := parseLDD("\tlibfoo.so.1 => not found\n"); err == nil {
		t.Fatal("a missing library was not an error")
	}
	if usrMerged("/lib64/ld-linux-x86-64.so.2") != "/usr/lib64/ld-linux-x86-64.so.2" || usrMerged("/usr/bin/ip") != "/usr/bin/ip" {
		t.Fatal("usrMerged")
	}
}

func TestParseOutput(t *testing.T) {
	tests := []struct {
		name, out string
		up        bool
		exit      int
		reason    string
	}{
		{"passed", "MESH-VM-UP 6.1.0\r\n=== RUN TestX\n--- PASS: TestX\nMESH-VM-EXIT 0\n", true, 0, ""},
		{"failed", "MESH-VM-UP 6.1.0\nMESH-VM-EXIT 1\n", true, 1, ""},
		{"init failed", "MESH-VM-EXIT 125 insmod wireguard.ko\n", false, 125, "insmod wireguard.ko"},
		{"cut short", "MESH-VM-UP 6.1.0\n=== RUN TestX\n", true, -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up, exit, reason := parseOutput(tt.out)
			if up != tt.up || exit != tt.exit || reason != tt.reason {
				t.Fatalf("parseOutput = %v %d %q, want %v %d %q", up, exit, reason, tt.up, tt.exit, tt.reason)
			}
		})
	}
}
