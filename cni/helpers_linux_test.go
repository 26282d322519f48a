package cni_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshnet/mesh/cni"
	"github.com/meshnet/mesh/cni/cnitest"
	"github.com/meshnet/mesh/internal/netnstest"
	"github.com/meshnet/mesh/internal/testnet"
)

const (
	clusterRange = "10.32.0.0/12"
	ownedRange   = "10.32.0.0/24"
)

// env is one test case's world: a fake daemon, a host netns with its bridge,
// and the plugin pointed at both.
type env struct {
	d    *cnitest.FakeDaemon
	host *cnitest.Host
	p    *cni.Plugin
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testnet.RequireRoot(t)
	d := cnitest.NewFakeDaemon(t, clusterRange, ownedRange)
	host := cnitest.NewHost(t, d)
	return &env{d: d, host: host, p: &cni.Plugin{HostNS: host.NS, Timeout: 10 * time.Second}}
}

// conf is the network configuration for version v pointing at e's daemon.
func (e *env) conf(v string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"mesh","type":"mesh-cni","socket":%q}`, v, e.d.Socket))
}

func (e *env) args(containerID, netns, ifName string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: containerID, Netns: netns, IfName: ifName, StdinData: e.conf("1.1.0")}
}

// assertClean fails t unless the host netns holds only lo and the bridge and
// the daemon holds no allocation: what every failed ADD must leave.
func (e *env) assertClean(t *testing.T) {
	t.Helper()
	links := e.host.Links(t)
	slices.Sort(links)
	want := []string{e.host.Bridge, "lo"}
	slices.Sort(want)
	if !slices.Equal(links, want) {
		t.Errorf("host links = %v, want %v", links, want)
	}
	if a := e.d.Allocations(); len(a) != 0 {
		t.Errorf("daemon allocations = %+v, want none", a)
	}
}

// wantCNIError fails t unless err is a CNI error with code and a message
// containing each of msgs.
func wantCNIError(t *testing.T, err error, code uint, msgs ...string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want a CNI error with code %d", err, err, code)
	}
	if e.Code != code {
		t.Errorf("error code = %d (%q), want %d", e.Code, e.Msg, code)
	}
	for _, m := range msgs {
		if !strings.Contains(e.Msg, m) {
			t.Errorf("error message %q does not contain %q", e.Msg, m)
		}
	}
}

// dialFromPod connects from the pod netns to addr:port in the host netns,
// where a listener answers: proof that ARP and routes work both ways.
func dialFromPod(t *testing.T, hostNS, podNS string, addr string) {
	t.Helper()
	var ln net.Listener
	err := netnstest.Do(hostNS, func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
		return err
	})
	if err != nil {
		t.Fatalf("failed to listen on %s in the host netns: %v", addr, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	err = netnstest.Do(podNS, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil {
			return fmt.Errorf("failed to read from %s: %w", ln.Addr(), err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pod cannot reach %s: %v", ln.Addr(), err)
	}
}
