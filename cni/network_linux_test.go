package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/cni/cnitest"
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
		args := &skel.CmdArgs{ContainerID: p.id, Netns: cnitest.NewNS(t), IfName: "eth0", StdinData: confOf(p.network, nil)}
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
