package daemon

import "time"

// leaveTimeout bounds the graceful leave of `mesh leave`: memberlist's
// broadcast of the leave, and the goodbyes to the peers (half of it).
const leaveTimeout = 3 * time.Second

// lifecycleAPI is control.Lifecycle: POST /v1/leave (`mesh leave`, and
// uninstall). The node leaves the mesh gracefully, so that the others show
// it as left and drop its WireGuard peer at once, then the daemon stops
// (LeaveRequested). A plain stop (SIGTERM) is a restart and no leave.
type lifecycleAPI struct{ d *Daemon }

func (l lifecycleAPI) Leave() error {
	d := l.d
	d.leaveOnce.Do(func() {
		d.log.Info("leaving the mesh on request, then stopping")
		d.left.Store(true)
		d.leaveErr = d.members.Leave(leaveTimeout)
		close(d.leaving)
	})
	<-d.leaving
	return d.leaveErr
}

// LeaveRequested is closed once the node has left the mesh on request
// (`mesh leave`): the caller then stops the daemon with Stop.
func (d *Daemon) LeaveRequested() <-chan struct{} { return d.leaving }
