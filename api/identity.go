package api

import (
	"context"
	"net/http"
)

// ForgetIdentityRequest is `mesh forget-identity NAME` (POST
// /v1/forget-identity): release, on this node only, the binding of a node
// name to the signing identity first seen for it.
type ForgetIdentityRequest struct {
	Name string `json:"name"`
}

// ForgetIdentityResult says whether the name was bound.
type ForgetIdentityResult struct {
	Released bool `json:"released"`
}

// ForgetIdentity releases name's identity binding on the daemon's node.
func (c *Client) ForgetIdentity(ctx context.Context, name string) (bool, error) {
	var r ForgetIdentityResult
	err := c.Do(ctx, http.MethodPost, "/v1/forget-identity", ForgetIdentityRequest{Name: name}, &r)
	return r.Released, err
}
