package cni

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshnet/mesh/api"
)

// Plugin-specific error codes (the spec reserves 0-99 for itself).
const (
	// ErrDaemonRefused: the daemon answered the request with an error
	// other than "not ready yet" (e.g. the address range is exhausted).
	ErrDaemonRefused uint = 100
	// ErrCheckFailed: CHECK found the attachment differs from what ADD set up.
	ErrCheckFailed uint = 101
)

// newError returns a CNI error with a formatted message.
func newError(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

// internalError is a failure of the host (netlink, namespaces) that the
// spec has no code for.
func internalError(format string, args ...any) *types.Error {
	return newError(types.ErrInternal, format, args...)
}

// daemonError turns a failed daemon request into a CNI error. The daemon
// being unreachable, or answering that it is not ready, is code 11 (try
// again later): the runtime retries, and by then `mesh launch` may be up.
func daemonError(what string, err error) *types.Error {
	var reqErr *api.RequestError
	switch {
	case errors.Is(err, api.ErrDaemonUnreachable):
		return newError(types.ErrTryAgainLater, "failed to %s: %v", what, err)
	case errors.As(err, &reqErr) && (reqErr.Code == http.StatusServiceUnavailable || reqErr.Code == http.StatusTooManyRequests):
		return newError(types.ErrTryAgainLater, "failed to %s: the mesh daemon is not ready: %v", what, err)
	case errors.As(err, &reqErr):
		return newError(ErrDaemonRefused, "failed to %s: the mesh daemon refused: %v", what, err)
	default:
		return newError(types.ErrIOFailure, "failed to %s: %v", what, err)
	}
}
