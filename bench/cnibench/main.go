// Command cnibench times CNI ADD and DEL of several networks side by side,
// the way a container runtime calls them (libcni, exec of the plugins with
// the CNI_* environment). It runs inside one simulated host (bench drives it
// there) and prints the latencies as JSON on stdout.
//
//	cnibench -pods 100 -warmup 5 -path /opt/cni/bin mesh=/etc/cni/net.d/10-mesh.conflist ref=/etc/cni/bench/ref.conflist
//
// For each network it creates pods+warmup network namespaces, ADDs all of
// them (one pod of each network in turn, the order alternating, so drift
// hits all networks alike), then DELs all of them, and removes the
// namespaces. The warm-up pods are not reported.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

type network struct {
	name string
	list *libcni.NetworkConfigList
}

// Result is printed as JSON: nanoseconds per operation and network.
type Result struct {
	Add map[string][]int64 `json:"add"`
	Del map[string][]int64 `json:"del"`
}

func main() {
	pods := flag.Int("pods", 100, "pods per network")
	warmup := flag.Int("warmup", 5, "pods per network not reported")
	path := flag.String("path", "/opt/cni/bin", "CNI_PATH, colon separated")
	cache := flag.String("cache", "/var/lib/cni", "libcni's cache directory")
	flag.Parse()
	if err := run(*pods, *warmup, strings.Split(*path, ":"), *cache, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "cnibench:", err)
		os.Exit(1)
	}
}

func run(pods, warmup int, path []string, cacheDir string, specs []string) (err error) {
	if pods < 1 || pods > 1000 || warmup < 0 || warmup > 100 || len(specs) == 0 {
		return fmt.Errorf("want 1..1000 pods, 0..100 warm-up pods and at least one name=conflist")
	}
	var nets []network
	for _, s := range specs {
		name, file, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("bad network %q: want name=conflist", s)
		}
		list, err := libcni.ConfListFromFile(file)
		if err != nil {
			return err
		}
		nets = append(nets, network{name, list})
	}
	total := pods + warmup
	nsName := func(n network, i int) string { return fmt.Sprintf("cb-%s-%d", n.name, i) }

	var add, del strings.Builder
	for _, n := range nets {
		for i := range total {
			fmt.Fprintf(&add, "netns add %s\n", nsName(n, i))
			fmt.Fprintf(&del, "netns del %s\n", nsName(n, i))
		}
	}
	if err := ipBatch(add.String()); err != nil {
		return err
	}
	defer func() {
		if derr := ipBatch(del.String()); derr != nil && err == nil {
			err = derr
		}
	}()

	cni := libcni.NewCNIConfigWithCacheDir(path, cacheDir, nil)
	rt := func(n network, i int) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{
			ContainerID: fmt.Sprintf("cnibench-%s-%d", n.name, i),
			NetNS:       "/run/netns/" + nsName(n, i),
			IfName:      "eth0",
		}
	}
	res := Result{Add: map[string][]int64{}, Del: map[string][]int64{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// order alternates which network goes first for pod i.
	order := func(i int) []network {
		if i%2 == 0 || len(nets) == 1 {
			return nets
		}
		r := make([]network, len(nets))
		for j := range nets {
			r[j] = nets[len(nets)-1-j]
		}
		return r
	}
	added := map[string]int{}
	defer func() {
		// Best-effort DEL of whatever an error left behind.
		if err == nil {
			return
		}
		for _, n := range nets {
			for i := range added[n.name] {
				_ = cni.DelNetworkList(ctx, n.list, rt(n, i))
			}
		}
	}()
	for i := range total {
		for _, n := range order(i) {
			start := time.Now()
			if _, err := cni.AddNetworkList(ctx, n.list, rt(n, i)); err != nil {
				return fmt.Errorf("ADD %s pod %d: %w", n.name, i, err)
			}
			d := time.Since(start)
			added[n.name] = i + 1
			if i >= warmup {
				res.Add[n.name] = append(res.Add[n.name], int64(d))
			}
		}
	}
	for i := range total {
		for _, n := range order(i) {
			start := time.Now()
			if err := cni.DelNetworkList(ctx, n.list, rt(n, i)); err != nil {
				return fmt.Errorf("DEL %s pod %d: %w", n.name, i, err)
			}
			d := time.Since(start)
			if i >= warmup {
				res.Del[n.name] = append(res.Del[n.name], int64(d))
			}
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func ipBatch(script string) error {
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -batch: %w: %s", err, out)
	}
	return nil
}
