package daemon

import (
	"net/http"
	"time"

	"github.com/meshnet/mesh/api"
)

// leaveTimeout bounds the graceful leave of `mesh leave`: memberlist's
// broadcast of the leave, and the goodbyes to the peers (half of it).
const leaveTimeout = 3 * time.Second

// handleLeave is POST /v1/leave (`mesh leave`, and uninstall): the node
// leaves the mesh gracefully, so that the others show it as left and drop
// its WireGuard peer at once, then the daemon stops (LeaveRequested). A
// plain stop (SIGTERM) is a restart and no leave.
func (d *Daemon) handleLeave(w http.ResponseWriter, r *http.Request) {
	var req api.LeaveRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	d.leaveOnce.Do(func() {
		d.log.Info("leaving the mesh on request, then stopping")
		d.left.Store(true)
		d.leaveErr = d.members.Leave(leaveTimeout)
		close(d.leaving)
	})
	<-d.leaving
	if d.leaveErr != nil {
		writeError(w, http.StatusInternalServerError, d.leaveErr)
		return
	}
	writeJSON(w, http.StatusOK, api.LeaveResult{Left: true})
}

// LeaveRequested is closed once the node has left the mesh on request
// (`mesh leave`): the caller then stops the daemon with Stop.
func (d *Daemon) LeaveRequested() <-chan struct{} { return d.leaving }
