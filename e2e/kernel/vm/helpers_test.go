//go:build kernelvm

package kernelvm

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshnet/mesh/fastdp"
	"github.com/meshnet/mesh/internal/meshtest"
	"github.com/meshnet/mesh/internal/testnet"
)

func TestMain(m *testing.M) {
	if os.Getenv(meshtest.BinDirEnv) == "" {
		fmt.Fprintf(os.Stderr, "these tests run inside the VM of `make e2e-kernel` (%s unset)\n", meshtest.BinDirEnv)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// run runs a command on h, bounded, failing t on error.
func run(t *testing.T, h *testnet.Host, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// kernelDevice reads the WireGuard device of h through the kernel's generic
// netlink API (wgctrl in h's network namespace).
func kernelDevice(h *testnet.Host, name string) (*wgtypes.Device, error) {
	var dev *wgtypes.Device
	err := h.Do(func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		dev, err = c.Device(name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wgctrl on %s, device %s: %w", h.Name, name, err)
	}
	if dev.Type != wgtypes.LinuxKernel {
		return nil, fmt.Errorf("device %s on %s is %s, want the kernel's", name, h.Name, dev.Type)
	}
	return dev, nil
}

// linkKind returns the kind of link name on h as `ip -d link` reports it.
func linkKind(t *testing.T, h *testnet.Host, name string) string {
	t.Helper()
	out := run(t, h, "ip", "-d", "-o", "link", "show", "dev", name)
	for _, k := range []string{"wireguard", "tun"} {
		if strings.Contains(out, " "+k+" ") {
			return k
		}
	}
	return out
}

// wgPeer is what the tests compare of a WireGuard peer, read from the kernel
// (wgctrl) or from wireguard-go (its UAPI socket).
type wgPeer struct {
	psk        wgtypes.Key
	keepalive  time.Duration
	allowedIPs []string // sorted
}

// wgView is one node's WireGuard device: its public key and its peers by
// public key.
type wgView struct {
	pub   wgtypes.Key
	mtu   int
	peers map[wgtypes.Key]wgPeer
}

func kernelView(h *testnet.Host) (*wgView, error) {
	dev, err := kernelDevice(h, fastdp.DefaultDeviceName)
	if err != nil {
		return nil, err
	}
	v := &wgView{pub: dev.PublicKey, peers: map[wgtypes.Key]wgPeer{}}
	for _, p := range dev.Peers {
		var ips []string
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		slices.Sort(ips)
		v.peers[p.PublicKey] = wgPeer{psk: p.PresharedKey, keepalive: p.PersistentKeepaliveInterval, allowedIPs: ips}
	}
	return v, nil
}

// userspaceView reads wireguard-go's device through its UAPI socket, in the
// host's private /run (wgctrl cannot be pointed at another mount namespace).
func userspaceView(h *testnet.Host) (*wgView, error) {
	sock := h.Path("/var/run/wireguard/" + fastdp.DefaultDeviceName + ".sock")
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("UAPI of %s: %w", h.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		return nil, fmt.Errorf("UAPI get on %s: %w", h.Name, err)
	}
	v := &wgView{peers: map[wgtypes.Key]wgPeer{}}
	var (
		cur  wgtypes.Key
		have bool
		p    wgPeer
	)
	flush := func() {
		if have {
			slices.Sort(p.allowedIPs)
			v.peers[cur] = p
		}
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		k, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			if sc.Text() == "" {
				break
			}
			continue
		}
		switch k {
		case "private_key":
			priv, err := hexKey(val)
			if err != nil {
				return nil, err
			}
			v.pub = priv.PublicKey()
		case "public_key":
			flush()
			key, err := hexKey(val)
			if err != nil {
				return nil, err
			}
			cur, have, p = key, true, wgPeer{}
		case "preshared_key":
			key, err := hexKey(val)
			if err != nil {
				return nil, err
			}
			p.psk = key
		case "persistent_keepalive_interval":
			s, err := strconv.Atoi(val)
			if err != nil {
				return nil, fmt.Errorf("UAPI keepalive %q: %w", val, err)
			}
			p.keepalive = time.Duration(s) * time.Second
		case "allowed_ip":
			p.allowedIPs = append(p.allowedIPs, val)
		case "errno":
			if val != "0" {
				return nil, fmt.Errorf("UAPI get on %s: errno %s", h.Name, val)
			}
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("UAPI get on %s: %w", h.Name, err)
	}
	return v, nil
}

func hexKey(s string) (wgtypes.Key, error) {
	b, err := hex.DecodeString(s)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("bad UAPI key: %w", err)
	}
	return wgtypes.NewKey(b)
}

// pod is a network namespace on a host wired by the real mesh-cni through
// cnitool, as a container runtime would.
type pod struct {
	host *testnet.Host
	name string
	ip   netip.Addr
}

func cnitool(t *testing.T) string {
	t.Helper()
	p := filepath.Join(os.Getenv(meshtest.BinDirEnv), "cnitool")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("cnitool: %v", err)
	}
	return p
}

func addPod(t *testing.T, h *testnet.Host, name string) *pod {
	t.Helper()
	run(t, h, "ip", "netns", "add", name)
	out := run(t, h, "env", "CNI_PATH=/opt/cni/bin", "NETCONFPATH=/etc/cni/net.d", cnitool(t), "add", "mesh", "/run/netns/"+name)
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("bad CNI ADD result on %s %q: %v", h.Name, out, err)
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		t.Fatal(err)
	}
	return &pod{host: h, name: name, ip: p.Addr()}
}

// ping pings dst from the pod; size > 0 sends that payload with DF set.
func (p *pod) ping(dst netip.Addr, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"netns", "exec", p.name, "ping", "-c", "2", "-W", "3", "-i", "0.3"}
	if size > 0 {
		args = append(args, "-M", "do", "-s", strconv.Itoa(size))
	}
	out, err := p.host.Run(ctx, "ip", append(args, dst.String())...)
	if err != nil {
		return fmt.Errorf("pod %s on %s cannot ping %s: %v\n%s", p.name, p.host.Name, dst, err, out)
	}
	return nil
}

// launch starts a daemon with the test mesh's key file, the recommended
// setup: a password's Argon2id run (64 MiB, hundreds of milliseconds on
// real hardware) takes far longer under the VM's plain emulation than the
// helpers wait for a daemon to answer.
func launch(t *testing.T, h *testnet.Host, peers []*testnet.Host, extra ...string) *meshtest.Node {
	t.Helper()
	return meshtest.LaunchWithEnv(t, h, peers, nil, append(meshtest.KeyFileArgs(t, h), extra...)...)
}
