//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

// isoPods is the number of pods of the CNI part of the isolation bench,
// per setting.
var isoPods = envInt("BENCH_ISOLATION_PODS", 50)

// benchIsolation measures what port isolation costs on one node: CNI
// ADD+DEL (the daemon reprograms the tables on every allocation and
// release) and pod-to-pod TCP throughput on the bridge, with the rules on
// and then, after a restart of the daemon with --no-port-isolation, off.
func benchIsolation(t *testing.T, r *report) {
	tn := testnet.New(t, testnet.Options{Hosts: 1, Prefix: "biso"})
	h := tn.Hosts()[0]
	n := launch(t, h, nil)
	if err := waitReady([]*node{n}, 60*time.Second); err != nil {
		t.Fatalf("single-host mesh: %v\n%s", err, n.Proc.Log())
	}
	meshtest.WaitCNIInstalled(t, n.Node)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cnitool := testnet.BuildBinary(t, "github.com/containernetworking/cni/cnitool")
	var ips []netip.Addr
	for _, name := range []string{"isoa", "isob"} {
		if out, err := h.Run(ctx, "ip", "netns", "add", name); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		out, err := h.Run(ctx, "env", "CNI_PATH=/opt/cni/bin", "NETCONFPATH=/etc/cni/net.d", cnitool, "add", "mesh", "/run/netns/"+name)
		if err != nil {
			t.Fatalf("cnitool add: %v\n%s", err, out)
		}
		var res struct {
			IPs []struct{ Address string } `json:"ips"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
			t.Fatalf("ADD result %q: %v", out, err)
		}
		ips = append(ips, netip.MustParsePrefix(res.IPs[0].Address).Addr())
	}
	h.Start(t, "ip", []string{"netns", "exec", "isob", "iperf3", "-s"}, nil)

	r.isoCNI = map[string]cniLatency{}
	r.isoTput = map[string][]float64{}
	tool := testnet.BuildBinary(t, "./bench/cnibench")
	base := slices.Clone(n.Args)
	current := "on"
	// switchTo restarts the daemon with isolation on or off.
	switchTo := func(setting string) {
		if setting == current {
			return
		}
		if err := n.Proc.Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		n.Args = slices.Clone(base)
		if setting == "off" {
			n.Args = append(n.Args, "--no-port-isolation")
		}
		n.Start()
		current = setting
		// Without isolation the host sends ICMP redirects: the pods
		// learnt to reach each other straight by MAC, which isolation
		// drops. Forget them, as pods made with isolation on never learn
		// them.
		for _, ns := range []string{"isoa", "isob"} {
			if out, err := h.Run(ctx, "ip", "netns", "exec", ns, "ip", "route", "flush", "cache"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		out, err := h.Run(ctx, "nft", "list", "ruleset")
		if err != nil || strings.Contains(out, "mesh-isolation") != (setting == "on") {
			t.Fatalf("isolation %s, but the ruleset (%v):\n%s", setting, err, out)
		}
	}
	for _, setting := range []string{"on", "off"} {
		switchTo(setting)
		out, err := h.Run(ctx, tool, "-pods", strconv.Itoa(isoPods), "-warmup", "5", "-path", "/opt/cni/bin",
			"-cache", "/run/cni-bench/cache", "mesh=/etc/cni/net.d/10-mesh.conflist")
		if err != nil {
			r.isoErr = fmt.Sprintf("cnibench (%s): %v", setting, err)
			t.Error(r.isoErr)
			return
		}
		var res struct {
			Add map[string][]int64 `json:"add"`
			Del map[string][]int64 `json:"del"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("cnibench output %q: %v", out, err)
		}
		var l cniLatency
		for i, a := range res.Add["mesh"] {
			d := res.Del["mesh"][i]
			l.add, l.del, l.both = append(l.add, time.Duration(a)), append(l.del, time.Duration(d)), append(l.both, time.Duration(a+d))
		}
		r.isoCNI[setting] = l
	}
	// Throughput in rounds of off then on (a restart each), so both
	// settings share the machine's changing load.
	for round := range iperfRounds {
		for _, setting := range []string{"off", "on"} {
			switchTo(setting)
			bps, err := iperfIn(h, "isoa", ips[1].String(), iperfSecs)
			if err != nil {
				r.isoErr = fmt.Sprintf("iperf3 pod to pod (%s, round %d): %v", setting, round+1, err)
				t.Error(r.isoErr)
				return
			}
			r.isoTput[setting] = append(r.isoTput[setting], bps)
		}
	}
}

func (r *report) printIsolation(p func(string, ...any)) {
	p("\n5. Port isolation (bridge + inet mesh-isolation tables) on one node: on, then off (--no-port-isolation)\n")
	if r.isoErr != "" || len(r.isoCNI) < 2 {
		p("   not measured: %s\n", firstLine(r.isoErr))
		return
	}
	p("   %-34s %10s %10s %10s %14s\n", "", "A+D p50", "A+D p99", "ADD p50", "pod->pod TCP")
	for _, s := range []string{"on", "off"} {
		l := r.isoCNI[s]
		p("   %-34s %10s %10s %10s %9.2f Gbit/s\n", "isolation "+s+fmt.Sprintf(" (%d pods)", isoPods), ms(pct(l.both, .5)), ms(pct(l.both, .99)), ms(pct(l.add, .5)), mean(r.isoTput[s])/1e9)
	}
	on, off := r.isoCNI["on"], r.isoCNI["off"]
	var rounds []string
	for i := range min(len(r.isoTput["on"]), len(r.isoTput["off"])) {
		rounds = append(rounds, fmt.Sprintf("%.2f", r.isoTput["on"][i]/r.isoTput["off"][i]))
	}
	p("   ratio on/off: ADD+DEL p50 %.2f, throughput %.2f (per round: %s)\n", float64(pct(on.both, .5))/float64(pct(off.both, .5)),
		mean(r.isoTput["on"])/mean(r.isoTput["off"]), strings.Join(rounds, ", "))
}
