//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: the kernel
// exports them in USER_HZ, which is 100 on every Linux architecture.
const userHZ = 100

// groupCPU returns the user+system CPU time of every process in process
// group pgid, threads included. testnet starts each process in a group of
// its own, so this is the daemon (or wireguard-go) with any helper process
// it started, and nothing else on the host.
func groupCPU(pgid int) (time.Duration, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("reading /proc: %w", err)
	}
	var ticks int64
	found := false
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// The command name in parentheses may hold spaces: the fields
		// start after the last ')'. Then: state ppid pgrp session tty_nr
		// tpgid flags minflt cminflt majflt cmajflt utime stime.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("parsing /proc/%s/stat: utime %q stime %q", e.Name(), f[11], f[12])
		}
		ticks += u + st
		found = true
	}
	if !found {
		return 0, fmt.Errorf("no process in process group %d", pgid)
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// groupsCPU is groupCPU summed over several process groups.
func groupsCPU(pgids []int) (time.Duration, error) {
	var sum time.Duration
	for _, p := range pgids {
		d, err := groupCPU(p)
		if err != nil {
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// txBytes returns the bytes sent into device dev on host h (for a
// WireGuard device: the plaintext IP packets it carried outwards).
func txBytes(h *testnet.Host, dev string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Run(ctx, "ip", "-j", "-s", "link", "show", "dev", dev)
	if err != nil {
		return 0, err
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("parsing the statistics of %s on %s: %v: %q", dev, h.Name, err, out)
	}
	return links[0].Stats64.TX.Bytes, nil
}

// cpuSample is the CPU time both ends' processes used during one iperf3
// transfer, and the bytes both ends' tunnel devices carried meanwhile.
type cpuSample struct {
	cpu   time.Duration
	bytes int64
}

// perGB is CPU seconds per 1e9 bytes carried.
func (s cpuSample) perGB() float64 { return s.cpu.Seconds() / (float64(s.bytes) / 1e9) }

// cpuProbe measures a cpuSample around a transfer: the processes are
// the process groups pgids, the tunnels dev on hosts.
type cpuProbe struct {
	pgids []int
	hosts []*testnet.Host
	dev   string

	cpu0   time.Duration
	bytes0 int64
}

func (c *cpuProbe) bytes() (int64, error) {
	var sum int64
	for _, h := range c.hosts {
		b, err := txBytes(h, c.dev)
		if err != nil {
			return 0, err
		}
		sum += b
	}
	return sum, nil
}

func (c *cpuProbe) start() error {
	var err error
	if c.bytes0, err = c.bytes(); err != nil {
		return err
	}
	c.cpu0, err = groupsCPU(c.pgids)
	return err
}

func (c *cpuProbe) stop() (cpuSample, error) {
	cpu, err := groupsCPU(c.pgids)
	if err != nil {
		return cpuSample{}, err
	}
	b, err := c.bytes()
	if err != nil {
		return cpuSample{}, err
	}
	if b <= c.bytes0 {
		return cpuSample{}, fmt.Errorf("%s carried no bytes", c.dev)
	}
	return cpuSample{cpu: cpu - c.cpu0, bytes: b - c.bytes0}, nil
}

// printCPU prints part 3's CPU per GB, mesh beside bare wireguard-go,
// with their memory after the same transfers.
func (r *report) printCPU(p func(string, ...any)) {
	p("   CPU seconds per GB carried (utime+stime of both ends' processes from /proc/PID/stat, per GB through both ends' tunnels):\n")
	names := map[string]string{"mesh": "(b) mesh daemons", "wg": "(c) bare wireguard-go pair"}
	load := map[string][]memory{"mesh": r.meshLoad, "wg": r.wgLoad}
	total := map[string]float64{}
	for _, k := range []string{"mesh", "wg"} {
		ss := r.cpu[k]
		if len(ss) == 0 {
			p("   %-34s not measured\n", names[k])
			continue
		}
		var cpu time.Duration
		var bytes int64
		var rs []string
		for _, s := range ss {
			cpu += s.cpu
			bytes += s.bytes
			rs = append(rs, fmt.Sprintf("%.2f", s.perGB()))
		}
		total[k] = cpuSample{cpu, bytes}.perGB()
		mem := ""
		if m := load[k]; len(m) == 2 {
			mem = fmt.Sprintf("; RSS after %s / %s, peak %s / %s", mib(m[0].rss), mib(m[1].rss), mib(m[0].hwm), mib(m[1].hwm))
		}
		p("   %-34s %8.2f s/GB     (rounds: %s; %.1f s CPU for %.2f GB%s)\n", names[k], total[k], strings.Join(rs, ", "), cpu.Seconds(), float64(bytes)/1e9, mem)
	}
	if total["mesh"] > 0 && total["wg"] > 0 {
		var rs []float64
		var txt []string
		for i := range min(len(r.cpu["mesh"]), len(r.cpu["wg"])) {
			rs = append(rs, r.cpu["mesh"][i].perGB()/r.cpu["wg"][i].perGB())
			txt = append(txt, fmt.Sprintf("%.2f", rs[len(rs)-1]))
		}
		slices.Sort(rs)
		ratio := total["mesh"] / total["wg"]
		p("   ratio mesh/bare wireguard-go CPU per GB %.2f of the totals, median per round %.2f (rounds: %s)   goal <= 1.00: %s\n",
			ratio, rs[(len(rs)-1)/2], strings.Join(txt, ", "), verdict(ratio <= 1))
	}
}
