package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/cni"
	"github.com/meshnet/mesh/internal/netnstest"
)

// TestGCOnlyItsNetwork: two CNI networks share one daemon; GC of one
// releases only its own stale allocations, never the other's nor those of
// unknown network (an older plugin's).
func TestGCOnlyItsNetwork(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	confOf := func(network string, valid []types.GCAttachment) []byte {
		conf := map[string]any{"cniVersion": "1.1.0", "name": network, "type": "mesh-cni", "socket": e.d.Socket}
		if valid != nil {
			conf["cni.dev/valid-attachments"] = valid
		}
		data, _ := json.Marshal(conf)
		return data
	}
	for _, p := range []struct{ network, id string }{{"mesh", "m1"}, {"mesh", "m2"}, {"other", "o1"}} {
		args := &skel.CmdArgs{ContainerID: p.id, Netns: netnstest.New(t), IfName: "eth0", StdinData: confOf(p.network, nil)}
		if _, err := e.p.Add(ctx, args); err != nil {
			t.Fatalf("ADD of %s in %s: %v", p.id, p.network, err)
		}
	}
	if _, err := api.NewClient(e.d.Socket).Allocate(ctx, "legacy", "eth0"); err != nil {
		t.Fatalf("allocation without a network: %v", err)
	}
	nets := map[string]string{}
	for _, a := range e.d.Allocations() {
		nets[a.ContainerID] = a.Network
	}
	if got, want := fmt.Sprint(nets), "map[legacy: m1:mesh m2:mesh o1:other]"; got != want {
		t.Fatalf("recorded networks %s, want %s", got, want)
	}
	if err := e.p.GC(ctx, &skel.CmdArgs{StdinData: confOf("mesh", []types.GCAttachment{{ContainerID: "m2", IfName: "eth0"}})}); err != nil {
		t.Fatalf("GC of mesh: %v", err)
	}
	var left []string
	for _, a := range e.d.Allocations() {
		left = append(left, a.ContainerID)
	}
	if got := fmt.Sprint(left); len(left) != 3 || !contains(left, "m2") || !contains(left, "o1") || !contains(left, "legacy") {
		t.Fatalf("after GC of mesh keeping m2, allocations are %s, want m2, o1 and legacy", got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestConcurrentAddsOfOneKey: ADDs racing for one attachment all succeed
// with the same address, and afterwards the pod holds exactly it, the
// daemon still holds it and the host veth is there. Without the per-key
// lock a loser's rollback released the winner's address.
func TestConcurrentAddsOfOneKey(t *testing.T) {
	e := newEnv(t)
	pod := netnstest.New(t)
	const racers = 12
	errs := make(chan error, racers)
	addrs := make(chan string, racers)
	for range racers {
		go func() {
			res, err := e.p.Add(context.Background(), e.args("race", pod, "eth0"))
			if err == nil {
				addrs <- res.IPs[0].Address.String()
			}
			errs <- err
		}()
	}
	for range racers {
		if err := <-errs; err != nil {
			t.Errorf("a racing ADD failed: %v", err)
		}
	}
	close(addrs)
	seen := map[string]bool{}
	for a := range addrs {
		seen[a] = true
	}
	allocs := e.d.Allocations()
	if len(allocs) != 1 || len(seen) != 1 || !seen[allocs[0].Address] {
		t.Fatalf("ADDs answered %v, daemon holds %+v; want one address, held", seen, allocs)
	}
	ph := netnstest.Handle(t, pod)
	link, err := ph.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the pod: %v", err)
	}
	podAddrs, _ := ph.AddrList(link, netlink.FAMILY_V4)
	if len(podAddrs) != 1 || podAddrs[0].IPNet.String() != allocs[0].Address {
		t.Fatalf("pod addresses %v, want exactly %s", podAddrs, allocs[0].Address)
	}
	if _, err := netnstest.Handle(t, e.host.NS).LinkByName(cni.HostVethName("race", "eth0")); err != nil {
		t.Fatalf("host veth: %v", err)
	}
	// DEL racing ADDs of the same key: whatever the order, the end is
	// either wired and held, or neither.
	done := make(chan error, 4)
	for i := range 4 {
		go func() {
			if i%2 == 0 {
				done <- e.p.Del(context.Background(), e.args("race", pod, "eth0"))
				return
			}
			_, err := e.p.Add(context.Background(), e.args("race", pod, "eth0"))
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Errorf("racing ADD/DEL: %v", err)
		}
	}
	_, linkErr := ph.LinkByName("eth0")
	if held := len(e.d.Allocations()) == 1; held != (linkErr == nil) {
		t.Fatalf("after racing ADD and DEL: allocation held %v, pod interface present %v (%v)", held, linkErr == nil, linkErr)
	}
}
