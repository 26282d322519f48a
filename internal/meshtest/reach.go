package meshtest

import (
	"context"
	"fmt"
	"sync"
)

// reachParallel bounds the pings ReachAll has in flight at once.
const reachParallel = 8

// ReachAll pings, from nodes[0]'s host, the overlay address of every other
// node not yet in reached, a few at a time (one after the other, every
// address not reachable yet would add its reply timeout to a measured
// figure), and records those that answer. It reports the nodes without an
// overlay address and the addresses that did not answer; nil once every
// node has answered. Call it again (testnet.Eventually or Poll) until then.
func ReachAll(ctx context.Context, nodes []*Node, reached map[string]bool) error {
	var missing, todo []string
	for _, n := range nodes[1:] {
		st, err := n.SocketStatus()
		if err != nil {
			return err
		}
		switch {
		case st.OverlayIP == "":
			missing = append(missing, n.Host.Name+" (no overlay address yet)")
		case !reached[st.OverlayIP]:
			todo = append(todo, st.OverlayIP)
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, reachParallel)
	for _, ip := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// One reply ends it; until then a probe every 20 ms, so that a
			// probe sent before the path existed does not round the figure
			// up to a one-second reply timeout.
			_, err := nodes[0].Host.Run(ctx, "ping", "-c", "1", "-i", "0.02", "-w", "1", ip)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				missing = append(missing, ip)
			} else {
				reached[ip] = true
			}
		}()
	}
	wg.Wait()
	if len(missing) > 0 {
		return fmt.Errorf("%s does not reach %d of %d nodes yet: %v", nodes[0].Host.Name, len(missing), len(nodes)-1, missing)
	}
	return nil
}
