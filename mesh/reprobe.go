package mesh

import (
	"net"
	"sync"
	"time"

	"github.com/meshnet/mesh/api"
)

// reprobeEvery is how often a member this node suspects is pinged again.
const reprobeEvery = time.Second

// reprobeLoop pings every member this node suspects, once per reprobeEvery,
// until it answers or memberlist declares it dead. Without it a false
// suspicion lingered in the status: memberlist clears a refuted suspicion
// in its own node map but tells no delegate (an alive message with
// unchanged metadata calls no NotifyUpdate), and its own next probe of
// that member comes in turn, up to one probe interval per member later
// (docs/scale.md, "Membership on loopback"). An answer here proves the
// member reachable from this node, which is what "alive" says in the
// status. The pings of a round run at once, each bounded by memberlist's
// probe timeout, and the next round waits for them: at most one ping per
// suspected member is in flight. Returns when done is closed.
func (m *Membership) reprobeLoop(done <-chan struct{}) {
	tick := time.NewTicker(m.reprobeInterval())
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		var wg sync.WaitGroup
		for _, s := range m.suspects() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				addr := net.UDPAddrFromAddrPort(s.Addr)
				if _, err := m.list.Ping(s.Name, addr); err == nil {
					m.answered(s.Name)
				}
			}()
		}
		wg.Wait()
	}
}

func (m *Membership) reprobeInterval() time.Duration {
	if m.cfg.reprobeEvery > 0 {
		return m.cfg.reprobeEvery
	}
	return reprobeEvery
}

// suspects returns the members this node currently suspects.
func (m *Membership) suspects() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Member
	for _, mem := range m.members {
		if mem.State == api.MemberSuspect && !mem.Self && mem.Addr.IsValid() {
			out = append(out, *mem)
		}
	}
	return out
}
