package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/meshnet/mesh/api"
)

// fake implements every interface of Backend; each call records its
// arguments and answers with err when set.
type fake struct {
	mu    sync.Mutex
	err   error
	calls []string
}

func (f *fake) record(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
	return f.err
}

func (f *fake) Status(ctx context.Context) *api.Status {
	f.record("status")
	return &api.Status{Name: "n1", Peers: []api.Peer{}, Targets: []api.Target{}}
}
func (f *fake) Connect(a string) error { return f.record("connect %s", a) }
func (f *fake) Forget(a string) error  { return f.record("forget %s", a) }
func (f *fake) Allocate(ctx context.Context, req api.AllocateRequest) (api.Allocation, error) {
	if err := f.record("allocate %s/%s %s %s/%s", req.ContainerID, req.IfName, req.Network, req.PodNamespace, req.PodName); err != nil {
		return api.Allocation{}, err
	}
	return api.Allocation{ContainerID: req.ContainerID, IfName: req.IfName, Address: "10.32.0.7/32", Gateway: "10.32.0.1"}, nil
}
func (f *fake) Release(c, i string) error { return f.record("release %s/%s", c, i) }
func (f *fake) GC(network string, valid []api.ReleaseRequest) (int, error) {
	if err := f.record("gc %s %v", network, valid); err != nil {
		return 0, err
	}
	return 2, nil
}
func (f *fake) Allocations() []api.Allocation { f.record("allocations"); return nil }
func (f *fake) RemovePeer(name string) (int, error) {
	if err := f.record("rmpeer %s", name); err != nil {
		return 0, err
	}
	return 3, nil
}
func (f *fake) Rotate(req api.RotateRequest) (*api.RotateResult, error) {
	if err := f.record("rotate %v", req.NodeKey); err != nil {
		return nil, err
	}
	return &api.RotateResult{KeyIDs: []string{"k1"}, GossipKeyID: "k1", Added: []string{}, Dropped: []string{}}, nil
}
func (f *fake) Attach(ctx context.Context, netns, ifName string) (api.Attachment, error) {
	if err := f.record("attach %s %s", netns, ifName); err != nil {
		return api.Attachment{}, err
	}
	return api.Attachment{ContainerID: "mesh-attach-1", IfName: "eth0", NetNS: netns}, nil
}
func (f *fake) Detach(ctx context.Context, netns, ifName string) ([]api.Attachment, error) {
	return nil, f.record("detach %s %q", netns, ifName)
}
func (f *fake) List() []api.Attachment { f.record("attachments"); return nil }
func (f *fake) Leave() error           { return f.record("leave") }
func (f *fake) ForgetIdentity(name string) (bool, error) {
	return name == "b", f.record("forget-identity %s", name)
}

func backendOf(f *fake) Backend {
	return Backend{Status: f, Peers: f, IPAM: f, Keys: f, Attachments: f, Lifecycle: f, Identities: f}
}

// TestHandler: every route's status codes and bodies, against a fake
// backend: the codes and texts mesh-cni and the CLI rely on.
func TestHandler(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		err      error  // what the backend answers
		wantCode int    // HTTP status
		wantBody string // a substring of the body; "" = no check
		wantCall string // the backend call recorded; "" = none
	}{
		{name: "status", method: "GET", path: "/v1/status", wantCode: 200, wantBody: `"name": "n1"`, wantCall: "status"},
		{name: "status by POST", method: "POST", path: "/v1/status", wantCode: 405},
		{name: "unknown path", method: "GET", path: "/v1/nothing", wantCode: 404},
		{name: "connect", method: "POST", path: "/v1/connect", body: `{"address":"192.0.2.1"}`, wantCode: 204, wantCall: "connect 192.0.2.1"},
		{name: "connect by GET", method: "GET", path: "/v1/connect", wantCode: 405},
		{name: "connect bad JSON", method: "POST", path: "/v1/connect", body: `{"address":`, wantCode: 400, wantBody: "invalid request body"},
		{name: "connect unknown field", method: "POST", path: "/v1/connect", body: `{"addr":"x"}`, wantCode: 400, wantBody: `unknown field \"addr\"`},
		{name: "connect bad address", method: "POST", path: "/v1/connect", body: `{"address":"a:b:c"}`, err: Mark(ErrInvalid, errors.New("invalid peer address")), wantCode: 400, wantBody: `"error": "invalid peer address"`, wantCall: "connect a:b:c"},
		{name: "forget unknown", method: "POST", path: "/v1/forget", body: `{"address":"192.0.2.1"}`, err: fmt.Errorf("%w: 192.0.2.1:6783 is neither a target nor a remembered peer", ErrNotFound), wantCode: 404, wantBody: "not found: 192.0.2.1:6783 is neither", wantCall: "forget 192.0.2.1"},
		{name: "allocate", method: "POST", path: "/v1/ipam/allocate", body: `{"containerID":"c1","ifName":"eth0","network":"mesh","podNamespace":"a","podName":"web"}`, wantCode: 200, wantBody: `"address": "10.32.0.7/32"`, wantCall: "allocate c1/eth0 mesh a/web"},
		{name: "allocate without ifName", method: "POST", path: "/v1/ipam/allocate", body: `{"containerID":"c1"}`, wantCode: 400, wantBody: "containerID and ifName are required"},
		{name: "allocate unknown field", method: "POST", path: "/v1/ipam/allocate", body: `{"containerID":"c1","ifName":"eth0","extra":1}`, wantCode: 400, wantBody: "unknown field"},
		{name: "allocate not ready", method: "POST", path: "/v1/ipam/allocate", body: `{"containerID":"c1","ifName":"eth0"}`, err: Mark(ErrUnavailable, errors.New("failed to allocate an address for c1/eth0: not ready")), wantCode: 503, wantBody: "failed to allocate an address for c1/eth0: not ready", wantCall: "allocate c1/eth0  /"},
		{name: "allocate no space", method: "POST", path: "/v1/ipam/allocate", body: `{"containerID":"c1","ifName":"eth0"}`, err: Mark(ErrNoSpace, errors.New("range full")), wantCode: 507, wantBody: "range full", wantCall: "allocate c1/eth0  /"},
		{name: "allocate internal", method: "POST", path: "/v1/ipam/allocate", body: `{"containerID":"c1","ifName":"eth0"}`, err: errors.New("disk broke"), wantCode: 500, wantBody: "disk broke", wantCall: "allocate c1/eth0  /"},
		{name: "release", method: "POST", path: "/v1/ipam/release", body: `{"containerID":"c1","ifName":"eth0"}`, wantCode: 204, wantCall: "release c1/eth0"},
		{name: "release fails", method: "POST", path: "/v1/ipam/release", body: `{"containerID":"c1","ifName":"eth0"}`, err: Mark(ErrUnavailable, errors.New("closed")), wantCode: 503, wantBody: "closed", wantCall: "release c1/eth0"},
		{name: "gc", method: "POST", path: "/v1/ipam/gc", body: `{"network":"mesh","valid":[{"containerID":"c1","ifName":"eth0"}]}`, wantCode: 200, wantBody: `"released": 2`, wantCall: "gc mesh [{c1 eth0}]"},
		{name: "gc bad JSON", method: "POST", path: "/v1/ipam/gc", body: `[]`, wantCode: 400, wantBody: "invalid request body"},
		{name: "allocations empty", method: "GET", path: "/v1/ipam/allocations", wantCode: 200, wantBody: "[]", wantCall: "allocations"},
		{name: "forget-identity", method: "POST", path: "/v1/forget-identity", body: `{"name":"b"}`, wantCode: 200, wantBody: `"released": true`, wantCall: "forget-identity b"},
		{name: "forget-identity unbound", method: "POST", path: "/v1/forget-identity", body: `{"name":"c"}`, wantCode: 200, wantBody: `"released": false`, wantCall: "forget-identity c"},
		{name: "forget-identity without name", method: "POST", path: "/v1/forget-identity", body: `{}`, wantCode: 400, wantBody: "node name is empty"},
		{name: "rmpeer", method: "POST", path: "/v1/ipam/rmpeer", body: `{"name":"b"}`, wantCode: 200, wantBody: `"ranges": 3`, wantCall: "rmpeer b"},
		{name: "rmpeer refused", method: "POST", path: "/v1/ipam/rmpeer", body: `{"name":"b"}`, err: Mark(ErrConflict, errors.New("refusing to remove b: it is alive")), wantCode: 409, wantBody: "refusing to remove b: it is alive", wantCall: "rmpeer b"},
		{name: "rotate", method: "POST", path: "/v1/rotate", body: `{}`, wantCode: 200, wantBody: `"gossipKeyID": "k1"`, wantCall: "rotate false"},
		{name: "rotate node key", method: "POST", path: "/v1/rotate", body: `{"nodeKey":true}`, wantCode: 200, wantCall: "rotate true"},
		{name: "rotate bad files", method: "POST", path: "/v1/rotate", body: `{}`, err: Mark(ErrInvalid, errors.New("mesh keys unchanged: bad file")), wantCode: 400, wantBody: "mesh keys unchanged: bad file", wantCall: "rotate false"},
		{name: "rotate fails", method: "POST", path: "/v1/rotate", body: `{}`, err: errors.New("gossip"), wantCode: 500, wantCall: "rotate false"},
		{name: "attach", method: "POST", path: "/v1/attach", body: `{"netns":"/run/netns/blue"}`, wantCode: 200, wantBody: `"containerID": "mesh-attach-1"`, wantCall: "attach /run/netns/blue "},
		{name: "attach relative path", method: "POST", path: "/v1/attach", body: `{"netns":"blue"}`, wantCode: 400, wantBody: `netns \"blue\" must be an absolute path`},
		{name: "attach not installed", method: "POST", path: "/v1/attach", body: `{"netns":"/run/netns/blue","ifName":"eth1"}`, err: Mark(ErrUnavailable, errors.New("cannot attach yet")), wantCode: 503, wantBody: "cannot attach yet", wantCall: "attach /run/netns/blue eth1"},
		{name: "attach not a netns", method: "POST", path: "/v1/attach", body: `{"netns":"/etc"}`, err: Mark(ErrInvalid, errors.New("not a network namespace")), wantCode: 400, wantCall: "attach /etc "},
		{name: "detach nothing", method: "POST", path: "/v1/detach", body: `{"netns":"/run/netns/blue"}`, wantCode: 200, wantBody: `"detached": []`, wantCall: `detach /run/netns/blue ""`},
		{name: "detach relative path", method: "POST", path: "/v1/detach", body: `{"netns":"./blue"}`, wantCode: 400, wantBody: "must be an absolute path"},
		{name: "leave", method: "POST", path: "/v1/leave", body: `{}`, wantCode: 200, wantBody: `"left": true`, wantCall: "leave"},
		{name: "leave fails", method: "POST", path: "/v1/leave", body: `{}`, err: errors.New("broadcast timed out"), wantCode: 500, wantBody: "broadcast timed out", wantCall: "leave"},
		{name: "leave GET", method: "GET", path: "/v1/leave", wantCode: 405},
		{name: "attachments empty", method: "GET", path: "/v1/attachments", wantCode: 200, wantBody: "[]", wantCall: "attachments"},
		{name: "body too large", method: "POST", path: "/v1/ipam/release", body: `{"containerID":"` + strings.Repeat("x", 1<<20) + `"}`, wantCode: 400, wantBody: "request body too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fake{err: tt.err}
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			Handler(backendOf(f)).ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Errorf("%s %s: code %d, want %d (body %s)", tt.method, tt.path, rec.Code, tt.wantCode, rec.Body)
			}
			if !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("%s %s: body %s does not contain %s", tt.method, tt.path, rec.Body, tt.wantBody)
			}
			if rec.Code >= 400 && rec.Code != 404 && rec.Code != 405 {
				var e api.Error
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
					t.Errorf("error body %q is not an api.Error: %v", rec.Body, err)
				}
			}
			var want []string
			if tt.wantCall != "" {
				want = []string{tt.wantCall}
			}
			if fmt.Sprint(f.calls) != fmt.Sprint(want) {
				t.Errorf("backend calls %q, want %q", f.calls, want)
			}
		})
	}
}

// TestMark: a kind chooses the code and leaves the text alone.
func TestMark(t *testing.T) {
	base := errors.New("the reason")
	tests := []struct {
		name string
		err  error
		code int
	}{
		{"invalid", Mark(ErrInvalid, base), http.StatusBadRequest},
		{"not found", Mark(ErrNotFound, base), http.StatusNotFound},
		{"conflict", Mark(ErrConflict, base), http.StatusConflict},
		{"unavailable", Mark(ErrUnavailable, base), http.StatusServiceUnavailable},
		{"no space", Mark(ErrNoSpace, base), http.StatusInsufficientStorage},
		{"wrapped kind", fmt.Errorf("adding: %w", Mark(ErrConflict, base)), http.StatusConflict},
		{"no kind", base, http.StatusInternalServerError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := code(tt.err); got != tt.code {
				t.Errorf("code = %d, want %d", got, tt.code)
			}
			if !strings.HasSuffix(tt.err.Error(), "the reason") || strings.Contains(tt.err.Error(), "conflict") {
				t.Errorf("text %q changed by its kind", tt.err)
			}
			if !errors.Is(tt.err, base) {
				t.Errorf("the marked error no longer wraps its cause")
			}
		})
	}
	if Mark(ErrInvalid, nil) != nil {
		t.Errorf("Mark of nil is not nil")
	}
}
