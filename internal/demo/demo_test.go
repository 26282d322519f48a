//go:build demo

// Package demo is `make demo`: a small mesh of simulated hosts on this
// machine, each a network namespace with its own mount namespace, running
// the real mesh binary. It prints what an operator would see, then tears
// everything down.
package demo

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

const password = "demo password, use a long random one in production"

func TestDemo(t *testing.T) {
	testnet.RequireRoot(t)
	bin := testnet.BuildBinary(t, "./cmd/mesh")
	net := testnet.New(t, testnet.Options{Hosts: 3, Prefix: "demo"})
	hosts := net.Hosts()
	say("Built %d simulated hosts on one switch: %s", len(hosts), hostList(hosts))

	procs := make([]*testnet.Proc, len(hosts))
	for i, h := range hosts {
		args := []string{"launch", "--name", h.Name, "--advertise-addr", h.Addr.String()}
		if i > 0 {
			args = append(args, hosts[0].Addr.String())
		}
		say("%s$ MESH_PASSWORD=... mesh %s", h.Name, strings.Join(args, " "))
		procs[i] = h.Start(t, bin, args, []string{"MESH_PASSWORD=" + password})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	testnet.Eventually(t, time.Minute, 250*time.Millisecond, func() error {
		for _, h := range hosts {
			out, err := h.Run(ctx, bin, "status", "peers")
			if err != nil {
				return err
			}
			if n := strings.Count(out, " alive "); n != len(hosts) {
				return fmt.Errorf("%s sees %d alive peers", h.Name, n)
			}
		}
		return nil
	})
	for _, h := range hosts {
		for _, sub := range [][]string{{"status"}, {"status", "peers"}} {
			out, err := h.Run(ctx, bin, sub...)
			if err != nil {
				t.Fatalf("mesh %v on %s: %v", sub, h.Name, err)
			}
			say("%s$ mesh %s\n%s", h.Name, strings.Join(sub, " "), out)
		}
	}
	for i, p := range procs {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stopping mesh on %s: %v", hosts[i].Name, err)
		}
	}
	say("Stopped the daemons; the simulated hosts are torn down now.")
}

func say(format string, args ...any) { fmt.Fprintf(os.Stdout, "\n"+format+"\n", args...) }

func hostList(hosts []*testnet.Host) string {
	var s []string
	for _, h := range hosts {
		s = append(s, fmt.Sprintf("%s (%s)", h.Name, h.Addr))
	}
	return strings.Join(s, ", ")
}
