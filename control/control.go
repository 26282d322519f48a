// Package control serves the daemon's local control API (the unix socket
// the CLI and mesh-cni talk to) and its metrics and probe endpoints: routes,
// request decoding and the mapping of failures to HTTP status codes. What a
// request does is behind the small interfaces below, which the daemon
// implements by wiring its parts; this package knows none of them.
//
// Every interface method may be called from many requests at once, so
// implementations must be safe for concurrent use. Methods that take a
// context may block until it ends; the others must not block on the
// network or on a slow loop.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/meshnet/mesh/api"
)

// StatusSource assembles the status document (GET /v1/status). It may
// block on the data plane's statistics until ctx ends.
type StatusSource interface {
	Status(ctx context.Context) *api.Status
}

// Peers changes the gossip targets (POST /v1/connect, /v1/forget). address
// is what the client sent, host or host:port; a malformed one is an error
// of kind ErrInvalid, a Forget of an unknown target one of kind
// ErrNotFound. Neither blocks: joining goes on in the background.
type Peers interface {
	Connect(address string) error
	Forget(address string) error
}

// IPAM is the address management as mesh-cni and the CLI use it. Allocate
// blocks until the address is recorded durably and the pod's port isolation
// and NetworkPolicy rules are in place, or until ctx (or its own bound for
// waiting on space) ends. Release and GC record their change durably before
// they return. Failures carry a kind (ErrUnavailable: try again later,
// ErrNoSpace, ErrConflict) or are internal errors.
type IPAM interface {
	Allocate(ctx context.Context, req api.AllocateRequest) (api.Allocation, error)
	Release(containerID, ifName string) error
	// GC frees every allocation of network that valid does not list and
	// returns how many it freed.
	GC(network string, valid []api.ReleaseRequest) (int, error)
	Allocations() []api.Allocation
	// RemovePeer removes a dead peer (mesh rmpeer), tombstoning its
	// ranges for their heirs, and returns how many; ErrConflict while
	// that is not safe yet.
	RemovePeer(name string) (int, error)
}

// Keys rotates the mesh keys or this node's WireGuard key (POST
// /v1/rotate). Rotations are serialised by the implementation; unusable key
// files are an error of kind ErrInvalid and leave the keys in use.
type Keys interface {
	Rotate(req api.RotateRequest) (*api.RotateResult, error)
}

// Lifecycle ends this node's membership on request (POST /v1/leave, `mesh
// leave` and uninstall): Leave blocks until the graceful leave has been
// broadcast (bounded by the implementation), and the daemon stops after it.
// Concurrent calls share one leave.
type Lifecycle interface {
	Leave() error
}

// Attachments runs `mesh attach` and `mesh detach`: Attach and Detach run
// the CNI plugin and block until it is done or ctx ends; List does not
// block. A path that is not a usable network namespace is ErrInvalid, an
// attach before the CNI config is installed ErrUnavailable.
type Attachments interface {
	Attach(ctx context.Context, netns, ifName string) (api.Attachment, error)
	Detach(ctx context.Context, netns, ifName string) ([]api.Attachment, error)
	List() []api.Attachment
}

// Kinds of failure, mapped to HTTP status codes by the handlers. Mark an
// error with one to choose the code without changing the error's text; an
// error of no kind is an internal error (500).
var (
	ErrInvalid     = errors.New("invalid request")            // 400
	ErrNotFound    = errors.New("not found")                  // 404
	ErrConflict    = errors.New("conflict")                   // 409
	ErrUnavailable = errors.New("unavailable, try again")     // 503
	ErrNoSpace     = errors.New("no space left in the range") // 507
)

// Mark returns err with the given kind (one of the Err values above); its
// text stays err's. Mark(kind, nil) is nil.
func Mark(kind, err error) error {
	if err == nil {
		return nil
	}
	return &marked{kind: kind, err: err}
}

type marked struct{ kind, err error }

func (m *marked) Error() string        { return m.err.Error() }
func (m *marked) Unwrap() error        { return m.err }
func (m *marked) Is(target error) bool { return target == m.kind }

// code maps an error's kind to its HTTP status code.
func code(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrNoSpace):
		return http.StatusInsufficientStorage
	default:
		return http.StatusInternalServerError
	}
}

// Identities releases a node name's binding to its signing identity (POST
// /v1/forget-identity, `mesh forget-identity`) on this node; an empty or
// own name is ErrInvalid.
type Identities interface {
	ForgetIdentity(name string) (bool, error)
}

// Backend is everything the control API serves from.
type Backend struct {
	Status      StatusSource
	Peers       Peers
	IPAM        IPAM
	Keys        Keys
	Attachments Attachments
	Lifecycle   Lifecycle
	Identities  Identities
}

// Handler returns the control API's routes (docs/architecture.md, "Control
// API"). A method a path does not take is answered 405 by the mux.
func Handler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Status.Status(r.Context()))
	})
	mux.HandleFunc("POST /v1/connect", peerRequest(b.Peers.Connect))
	mux.HandleFunc("POST /v1/forget", peerRequest(b.Peers.Forget))
	mux.HandleFunc("POST /v1/ipam/allocate", allocate(b.IPAM))
	mux.HandleFunc("POST /v1/ipam/release", release(b.IPAM))
	mux.HandleFunc("POST /v1/ipam/gc", gc(b.IPAM))
	mux.HandleFunc("GET /v1/ipam/allocations", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(b.IPAM.Allocations()))
	})
	mux.HandleFunc("POST /v1/ipam/rmpeer", removePeer(b.IPAM))
	mux.HandleFunc("POST /v1/rotate", rotate(b.Keys))
	mux.HandleFunc("POST /v1/attach", attachNetNS(b.Attachments))
	mux.HandleFunc("POST /v1/detach", detachNetNS(b.Attachments))
	mux.HandleFunc("GET /v1/attachments", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, nonNil(b.Attachments.List()))
	})
	mux.HandleFunc("POST /v1/leave", leave(b.Lifecycle))
	mux.HandleFunc("POST /v1/forget-identity", forgetIdentity(b.Identities))
	return mux
}

// nonNil makes an empty list encode as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid request body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, api.Error{Error: err.Error()})
}
