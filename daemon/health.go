package daemon

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Loop names and how long each may go without progress before /healthz
// fails. The IPAM tick loop beats every second and the reconcile loop at
// least every 5 s; the bounds leave room for a slow fsync or netlink call on
// a loaded machine without letting a wedged loop pass for alive.
const (
	loopIPAMTick  = "ipam-tick"
	loopReconcile = "reconcile"
)

var loopStallBound = map[string]time.Duration{
	loopIPAMTick:  30 * time.Second,
	loopReconcile: 60 * time.Second,
}

// loopHealth records when each main loop last made progress. Safe for
// concurrent use; beat never blocks on anything but its own short lock.
type loopHealth struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// beat records that loop made progress at now.
func (h *loopHealth) beat(loop string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last == nil {
		h.last = map[string]time.Time{}
	}
	h.last[loop] = now
}

// check returns an error naming every loop that has beaten at least once
// and then not within its bound; nil when all are making progress.
func (h *loopHealth) check(now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var stalled []string
	for loop, t := range h.last {
		bound, ok := loopStallBound[loop]
		if !ok {
			bound = time.Minute
		}
		if since := now.Sub(t); since > bound {
			stalled = append(stalled, fmt.Sprintf("%s loop made no progress for %s", loop, since.Round(time.Second)))
		}
	}
	if len(stalled) == 0 {
		return nil
	}
	slices.Sort(stalled)
	return fmt.Errorf("unhealthy: %v", stalled)
}
