package api

import (
	"context"
	"net/http"
)

// LeaveRequest is `mesh leave` (POST /v1/leave): leave the mesh gracefully,
// then stop. It has no fields.
type LeaveRequest struct{}

// LeaveResult answers it once the leave is announced; the daemon stops
// right after.
type LeaveResult struct {
	Left bool `json:"left"`
}

// Leave makes the daemon leave the mesh gracefully and stop.
func (c *Client) Leave(ctx context.Context) error {
	return c.Do(ctx, http.MethodPost, "/v1/leave", LeaveRequest{}, &LeaveResult{})
}
