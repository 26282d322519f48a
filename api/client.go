package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/mesh/mesh.sock"

// The CNI plugin as the daemon installs it: the binary's name (also its
// "type" in the conflist), the conflist's name ("10-" sorts it before most
// other networks, as the kubelet uses the first file), and the default
// directories runtimes read them from.
const (
	CNIPluginName     = "mesh-cni"
	CNIConfName       = "10-mesh.conflist"
	DefaultCNIBinDir  = "/opt/cni/bin"
	DefaultCNIConfDir = "/etc/cni/net.d"
)

// ErrDaemonUnreachable wraps every failure to reach the daemon at all, so
// callers (mesh-cni) can tell "try again later" from a refused request.
var ErrDaemonUnreachable = errors.New("cannot reach the mesh daemon")

// Client talks to the daemon over its unix socket. Safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Status returns the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Connect adds a peer the daemon tries to join.
func (c *Client) Connect(ctx context.Context, addr string) error {
	return c.Do(ctx, http.MethodPost, "/v1/connect", PeerRequest{Address: addr}, nil)
}

// Forget removes a peer from the daemon's targets and remembered peers.
func (c *Client) Forget(ctx context.Context, addr string) error {
	return c.Do(ctx, http.MethodPost, "/v1/forget", PeerRequest{Address: addr}, nil)
}

// Do sends in (when not nil) as JSON and decodes the answer into out (when
// not nil). An error answer becomes an error carrying the daemon's message.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("failed to encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://mesh"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		hint := ""
		// No socket, nobody listening, or the daemon went away while
		// this request was on a kept-alive connection.
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
			hint = " (is `mesh launch` running?)"
		}
		return fmt.Errorf("%w at %s%s: %v", ErrDaemonUnreachable, c.socket, hint, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("failed to read answer of %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &RequestError{Code: resp.StatusCode, Message: e.Error}
		}
		return &RequestError{Code: resp.StatusCode, Message: string(bytes.TrimSpace(data))}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("failed to decode answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

// RequestError is a request the daemon answered with an error.
type RequestError struct {
	Code    int
	Message string
}

func (e *RequestError) Error() string { return e.Message }
