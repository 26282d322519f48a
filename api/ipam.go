package api

import "context"

// AllocateRequest asks the daemon for a pod address (POST /v1/ipam/allocate).
// The same (ContainerID, IfName) always gets the same address back until it
// is released, so a retried CNI ADD is harmless.
type AllocateRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Network is the CNI network name the address is for, recorded with
	// the allocation so that GC of another network leaves it alone.
	// Optional: older plugins do not send it (the network is then unknown).
	Network string `json:"network,omitempty"`
	// PodNamespace and PodName name the Kubernetes pod (the runtime's
	// K8S_POD_NAMESPACE and K8S_POD_NAME): on a node that enforces
	// NetworkPolicy the daemon answers only once the pod's policies are
	// in place for the address. Empty for other containers.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
}

// Allocation is what a pod needs to be wired to the node.
type Allocation struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// Address is the pod's IP as a host prefix, e.g. "10.32.0.7/32".
	Address string `json:"address"`
	// Gateway is the node's overlay IP on the bridge; pods reach it with an
	// on-link route, as the bridge holds it as a host prefix.
	Gateway string `json:"gateway,omitempty"`
	// Bridge is the node's bridge the pod's host-side veth is attached to.
	Bridge string `json:"bridge,omitempty"`
	// MTU for the pod's interface (the data plane's MTU).
	MTU int `json:"mtu,omitempty"`
	// ClusterRange is the whole overlay range, e.g. "10.32.0.0/12".
	ClusterRange string `json:"clusterRange,omitempty"`
	// Network is the CNI network recorded with the allocation, in the list
	// of GET /v1/ipam/allocations; empty when unknown.
	Network string `json:"network,omitempty"`
	// MAC is the pod interface's MAC: the node's bridge admits only frames
	// from it (and Address) on the pod's port. Empty from daemons before
	// port isolation: the plugin then leaves the MAC random.
	MAC string `json:"mac,omitempty"`

	// Dual-stack (a daemon with an IPv6 --ipalloc-range besides the IPv4
	// one): the pod's IPv6 address as a host prefix ("fd32::7/128"), the
	// node's IPv6 overlay address on the bridge (the pod's IPv6 gateway)
	// and the IPv6 cluster range. Empty in an IPv4-only mesh and from
	// daemons before dual-stack; a plugin that does not know them wires
	// IPv4 only.
	Address6      string `json:"address6,omitempty"`
	Gateway6      string `json:"gateway6,omitempty"`
	ClusterRange6 string `json:"clusterRange6,omitempty"`
}

// ReleaseRequest frees an address (POST /v1/ipam/release). Releasing an
// unknown container is not an error.
type ReleaseRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCRequest releases every allocation of Network not listed in Valid
// (POST /v1/ipam/gc). Allocations of other networks, or of an unknown one,
// are kept; a request without Network (an older plugin) releases nothing.
type GCRequest struct {
	Valid   []ReleaseRequest `json:"valid"`
	Network string           `json:"network,omitempty"`
}

// GCResult counts what GC released.
type GCResult struct {
	Released int `json:"released"`
}

// Allocate asks for the address of (containerID, ifName), of no named
// network.
func (c *Client) Allocate(ctx context.Context, containerID, ifName string) (*Allocation, error) {
	return c.AllocateFor(ctx, AllocateRequest{ContainerID: containerID, IfName: ifName})
}

// AllocateIn asks for the address of (containerID, ifName) in the CNI
// network named network.
func (c *Client) AllocateIn(ctx context.Context, network, containerID, ifName string) (*Allocation, error) {
	return c.AllocateFor(ctx, AllocateRequest{ContainerID: containerID, IfName: ifName, Network: network})
}

// AllocateFor is Allocate with the whole request (its network, its pod).
func (c *Client) AllocateFor(ctx context.Context, req AllocateRequest) (*Allocation, error) {
	var a Allocation
	if err := c.Do(ctx, "POST", "/v1/ipam/allocate", req, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Release frees the address of (containerID, ifName).
func (c *Client) Release(ctx context.Context, containerID, ifName string) error {
	return c.Do(ctx, "POST", "/v1/ipam/release", ReleaseRequest{ContainerID: containerID, IfName: ifName}, nil)
}

// GC releases every allocation of the CNI network named network that is
// not in valid.
func (c *Client) GC(ctx context.Context, network string, valid []ReleaseRequest) (int, error) {
	var r GCResult
	if err := c.Do(ctx, "POST", "/v1/ipam/gc", GCRequest{Valid: valid, Network: network}, &r); err != nil {
		return 0, err
	}
	return r.Released, nil
}

// Allocations lists this node's allocations (GET /v1/ipam/allocations).
func (c *Client) Allocations(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	if err := c.Do(ctx, "GET", "/v1/ipam/allocations", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// RemovePeerRequest is `mesh rmpeer NAME` (POST /v1/ipam/rmpeer).
type RemovePeerRequest struct {
	Name string `json:"name"`
}

// RemovePeerResult counts the ranges taken over.
type RemovePeerResult struct {
	Ranges int `json:"ranges"`
}

// RemovePeer hands a dead peer's ranges to the daemon's node.
func (c *Client) RemovePeer(ctx context.Context, name string) (int, error) {
	var r RemovePeerResult
	if err := c.Do(ctx, "POST", "/v1/ipam/rmpeer", RemovePeerRequest{Name: name}, &r); err != nil {
		return 0, err
	}
	return r.Ranges, nil
}
