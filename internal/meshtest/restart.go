package meshtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
)

// Pod is a network namespace on a simulated host wired by the real mesh-cni
// through the real cnitool, as a container runtime would.
type Pod struct {
	Host *testnet.Host
	Name string // of the namespace, /run/netns/<Name> on Host
	IP   netip.Addr
	// IP6 is the pod's IPv6 address in a dual-stack mesh (the second
	// address of its ADD result), the zero Addr otherwise.
	IP6 netip.Addr
}

// AddPod creates the namespace name on h (unless it exists: a retried ADD)
// and runs CNI ADD for it with the conflist the daemon installed.
func AddPod(ctx context.Context, t testing.TB, h *testnet.Host, name string) (*Pod, error) {
	cnitool := testnet.BuildBinary(t, "github.com/containernetworking/cni/cnitool")
	if _, err := os.Stat(h.Path("/run/netns/" + name)); err != nil {
		if out, err := h.Run(ctx, "ip", "netns", "add", name); err != nil {
			return nil, fmt.Errorf("ip netns add %s on %s: %v: %s", name, h.Name, err, out)
		}
	}
	out, err := h.Run(ctx, "env", "CNI_PATH=/opt/cni/bin", "NETCONFPATH=/etc/cni/net.d", cnitool, "add", "mesh", "/run/netns/"+name)
	if err != nil {
		return nil, fmt.Errorf("cnitool add %s on %s: %v\n%s", name, h.Name, err, out)
	}
	ips, err := ADDResultAddrs(out)
	if err != nil {
		return nil, err
	}
	p := &Pod{Host: h, Name: name, IP: ips[0]}
	if len(ips) == 2 {
		if !ips[0].Is4() || !ips[1].Is6() {
			return nil, fmt.Errorf("ADD result addresses %v, want IPv4 then IPv6", ips)
		}
		p.IP6 = ips[1]
	}
	return p, nil
}

// ADDResultAddr is the one address of a CNI ADD result as cnitool prints it.
func ADDResultAddr(out string) (netip.Addr, error) {
	ips, err := ADDResultAddrs(out)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(ips) != 1 {
		return netip.Addr{}, fmt.Errorf("ADD result %q has %d addresses, want 1", out, len(ips))
	}
	return ips[0], nil
}

// ADDResultAddrs are the addresses of a CNI ADD result as cnitool prints
// it, in its order: one, or in a dual-stack mesh two.
func ADDResultAddrs(out string) ([]netip.Addr, error) {
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 || len(res.IPs) > 2 {
		return nil, fmt.Errorf("bad ADD result %q: %v", out, err)
	}
	var ips []netip.Addr
	for _, ip := range res.IPs {
		p, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return nil, fmt.Errorf("bad ADD result address %q: %w", ip.Address, err)
		}
		ips = append(ips, p.Addr())
	}
	return ips, nil
}

// RestartKind is how Restart stops the daemon before it launches it again.
type RestartKind string

const (
	// RestartSIGTERM: SIGTERM (systemctl restart, a DaemonSet rollout of
	// the same image), then launch the same binary.
	RestartSIGTERM RestartKind = "sigterm"
	// RestartUpgrade: SIGTERM, then launch a different build.
	RestartUpgrade RestartKind = "upgrade"
	// RestartKill: kill -9 (a crash, an OOM kill), then launch.
	RestartKill RestartKind = "kill"
)

// Restart stops n's daemon as kind says and launches it again, with bin
// when not empty (an upgrade). It returns when the new daemon's socket
// answers, and the time the new process was started.
func Restart(n *Node, kind RestartKind, bin string) (launched time.Time, err error) {
	n.T.Helper()
	switch kind {
	case RestartSIGTERM, RestartUpgrade:
		err = n.Proc.Stop(30 * time.Second)
	case RestartKill:
		err = n.Proc.Kill()
	default:
		return time.Time{}, fmt.Errorf("unknown restart kind %q", kind)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("stopping mesh on %s (%s): %w", n.Host.Name, kind, err)
	}
	if bin != "" {
		n.Bin = bin
	}
	launched = time.Now()
	n.Start()
	return launched, nil
}

// PingResult is what a ping run saw.
type PingResult struct {
	Sent, Received int
	// Interval is the ping interval.
	Interval time.Duration
	// LongestGap is the longest run of lost probes times the interval: how
	// long traffic stopped.
	LongestGap time.Duration
	// Replies are the arrival times of the replies, in order.
	Replies []time.Time
}

// Lost is how many probes got no reply.
func (r PingResult) Lost() int { return r.Sent - r.Received }

func (r PingResult) String() string {
	return fmt.Sprintf("%d of %d probes lost at %v, longest gap %v", r.Lost(), r.Sent, r.Interval, r.LongestGap)
}

// FirstReplyAfter is the time from t to the first reply that arrived
// after it, or -1 when none did.
func (r PingResult) FirstReplyAfter(t time.Time) time.Duration {
	for _, at := range r.Replies {
		if at.After(t) {
			return at.Sub(t)
		}
	}
	return -1
}

// Pinger is a ping running in a pod (started by StartPing).
type Pinger struct {
	proc     *testnet.Proc
	interval time.Duration
}

// StartPing starts count pings from pod p to dst at interval. -W 2 counts a
// reply that is merely late (a loaded machine) as received, so only a drop
// is a loss.
func StartPing(t testing.TB, p *Pod, dst netip.Addr, interval time.Duration, count int) *Pinger {
	t.Helper()
	args := []string{"netns", "exec", p.Name, "ping", "-D", "-n", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "2", dst.String()}
	return &Pinger{proc: p.Host.Start(t, "ip", args, nil), interval: interval}
}

var (
	pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
	pingReply   = regexp.MustCompile(`^\[(\d+)\.(\d+)\] \d+ bytes from .* icmp_seq=(\d+) `)
)

// Wait waits (at most timeout) for the pinger to finish and parses what it
// saw.
func (p *Pinger) Wait(timeout time.Duration) (PingResult, error) {
	_ = p.proc.Wait(timeout) // non-zero when probes were lost
	if !p.proc.Exited() {
		return PingResult{}, fmt.Errorf("ping did not finish within %v", timeout)
	}
	log := p.proc.Log()
	m := pingSummary.FindStringSubmatch(log)
	if m == nil {
		return PingResult{}, fmt.Errorf("no ping summary in:\n%s", log)
	}
	r := PingResult{Interval: p.interval}
	r.Sent, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	var seqs []int
	for _, line := range strings.Split(log, "\n") {
		rm := pingReply.FindStringSubmatch(line)
		if rm == nil {
			continue
		}
		sec, _ := strconv.ParseInt(rm[1], 10, 64)
		frac := rm[2]
		for len(frac) < 9 {
			frac += "0"
		}
		nsec, _ := strconv.ParseInt(frac[:9], 10, 64)
		r.Replies = append(r.Replies, time.Unix(sec, nsec))
		seq, _ := strconv.Atoi(rm[3])
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	seqs = slices.Compact(seqs)
	// Probes are numbered from 1; a gap is a run of numbers without a
	// reply, also at the start and at the end.
	prev, longest := 0, 0
	for _, s := range append(seqs, r.Sent+1) {
		if g := s - prev - 1; g > longest {
			longest = g
		}
		prev = s
	}
	r.LongestGap = time.Duration(longest) * p.interval
	return r, nil
}

// MeshProcesses returns the PIDs of the mesh daemons running in h's network
// namespace: after a restart there must be exactly one.
func MeshProcesses(h *testnet.Host) ([]int, error) { return Processes(h, "mesh") }

// DataplaneProcesses returns the PIDs of the mesh-dataplane processes
// running in h's network namespace.
func DataplaneProcesses(h *testnet.Host) ([]int, error) { return Processes(h, "mesh-dataplane") }

// Processes returns the PIDs of the processes named comm (as in
// /proc/PID/comm) running in h's network namespace.
func Processes(h *testnet.Host, comm string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(h.NetNS(), &want); err != nil {
		return nil, fmt.Errorf("stat %s: %w", h.NetNS(), err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st); err != nil {
			continue // gone meanwhile
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			out = append(out, pid)
		}
	}
	return out, nil
}

// CheckNothingLeftBehind reports an error unless h has exactly one mesh
// daemon (n's), one TUN device, the WireGuard one, and exactly one
// mesh-dataplane process, the one n's status reports up, or none when
// n runs wireguard-go in its own process.
func CheckNothingLeftBehind(ctx context.Context, n *Node) error {
	pids, err := MeshProcesses(n.Host)
	if err != nil {
		return err
	}
	if len(pids) != 1 || pids[0] != n.Proc.PID() {
		return fmt.Errorf("mesh processes on %s: %v, want only the daemon %d", n.Host.Name, pids, n.Proc.PID())
	}
	st, err := n.Status()
	if err != nil {
		return err
	}
	dps, err := DataplaneProcesses(n.Host)
	if err != nil {
		return err
	}
	switch dp := st.DataplaneProcess; {
	case dp == nil && len(dps) != 0:
		return fmt.Errorf("mesh-dataplane processes on %s: %v, want none (the daemon runs wireguard-go itself)", n.Host.Name, dps)
	case dp != nil && (len(dps) != 1 || dps[0] != dp.PID || dp.State != api.DataplaneProcessUp):
		return fmt.Errorf("mesh-dataplane processes on %s: %v, want only the one status reports: %+v", n.Host.Name, dps, *dp)
	}
	out, err := n.Host.Run(ctx, "ip", "-o", "link", "show", "type", "tun")
	if err != nil {
		return fmt.Errorf("ip link on %s: %w", n.Host.Name, err)
	}
	var tuns []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			tuns = append(tuns, l)
		}
	}
	if len(tuns) != 1 || !strings.Contains(tuns[0], ": mesh-wg:") {
		return fmt.Errorf("TUN devices on %s: %q, want only mesh-wg", n.Host.Name, tuns)
	}
	return nil
}
