package api

import "context"

// AttachRequest asks the daemon to attach (POST /v1/attach) or detach
// (POST /v1/detach) the network namespace at NetNS, an absolute path of a
// namespace file (/run/netns/NAME, /proc/PID/ns/net, ...), as the daemon
// sees it. IfName defaults to eth0 for attach; an empty IfName on detach
// means every interface of that namespace.
type AttachRequest struct {
	NetNS  string `json:"netns"`
	IfName string `json:"ifName,omitempty"`
}

// Attachment is one namespace attached to the mesh with `mesh attach`.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	NetNS       string `json:"netns"`
	// Address is the attachment's mesh address as a host prefix, e.g.
	// "10.32.0.7/32"; empty while its CNI ADD is in progress.
	Address string `json:"address,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	// Address6 and Gateway6 are the attachment's IPv6 address (a host
	// prefix, e.g. "fd32::7/128") and gateway in a dual-stack mesh, as in
	// Allocation; absent otherwise (in an IPv6-only mesh Address is the
	// IPv6 one).
	Address6 string `json:"address6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
	// Created is when it was attached (RFC 3339, UTC).
	Created string `json:"created"`
}

// DetachResult lists what a detach removed (none when nothing was attached).
type DetachResult struct {
	Detached []Attachment `json:"detached"`
}

// Attach attaches the namespace at netns and returns its attachment; the
// same namespace and interface get the same attachment back.
func (c *Client) Attach(ctx context.Context, netns, ifName string) (*Attachment, error) {
	var a Attachment
	if err := c.Do(ctx, "POST", "/v1/attach", AttachRequest{NetNS: netns, IfName: ifName}, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Detach removes the attachments of the namespace at netns.
func (c *Client) Detach(ctx context.Context, netns, ifName string) ([]Attachment, error) {
	var r DetachResult
	if err := c.Do(ctx, "POST", "/v1/detach", AttachRequest{NetNS: netns, IfName: ifName}, &r); err != nil {
		return nil, err
	}
	return r.Detached, nil
}

// Attachments lists this node's attachments (GET /v1/attachments).
func (c *Client) Attachments(ctx context.Context) ([]Attachment, error) {
	var out []Attachment
	if err := c.Do(ctx, "GET", "/v1/attachments", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}
