package main

import (
	"flag"
	"io"

	"github.com/meshnet/mesh/daemon"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseCIDRs(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []netip.Prefix
		err  string
	}{
		{"empty", "", nil, ""},
		{"one", "10.0.0.0/8", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, ""},
		{"spaces and empty items", " 10.0.0.0/8, ,192.168.0.0/16,", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}, ""},
		{"not a prefix", "10.0.0.1", nil, "10.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCIDRs(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestBehindNATFlag: --behind-nat alone forces attaching, =false turns
// the check off too, and the default (and =auto) checks at launch.
func TestBehindNATFlag(t *testing.T) {
	for _, tc := range []struct {
		name          string
		args          []string
		behind, check bool
		err           string
	}{
		{name: "default", check: true},
		{name: "alone", args: []string{"--behind-nat"}, behind: true},
		{name: "true", args: []string{"--behind-nat=true"}, behind: true},
		{name: "auto", args: []string{"--behind-nat=false", "--behind-nat=auto"}, check: true},
		{name: "false", args: []string{"--behind-nat=false"}},
		{name: "no", args: []string{"--behind-nat=no"}},
		{name: "garbage", args: []string{"--behind-nat=maybe"}, err: "want auto, true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := daemon.DefaultConfig()
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.Var(&natFlag{cfg: &cfg}, "behind-nat", "")
			err := fs.Parse(tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.BehindNAT != tc.behind || cfg.NATCheck != tc.check {
				t.Fatalf("BehindNAT %v, NATCheck %v; want %v, %v", cfg.BehindNAT, cfg.NATCheck, tc.behind, tc.check)
			}
		})
	}
	cfg := daemon.DefaultConfig()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Var(&natFlag{cfg: &cfg}, "behind-nat", "")
	if got := fs.Lookup("behind-nat").DefValue; got != "auto" {
		t.Fatalf("--help shows the default as %q, want auto", got)
	}
}
