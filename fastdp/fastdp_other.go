//go:build !linux

package fastdp

import (
	"context"
	"errors"
	"net/netip"
)

var errUnsupported = errors.New("the mesh data plane runs on Linux only")

// New fails: the data plane needs Linux.
func New(ctx context.Context, opts Options) (Dataplane, error) { return nil, errUnsupported }

// Reset fails: the data plane needs Linux.
func Reset(ctx context.Context, opts Options) error { return errUnsupported }

// DetectMTU fails: the data plane needs Linux.
func DetectMTU(dst netip.Addr) (int, error) { return 0, errUnsupported }

// Serve fails: the data plane needs Linux.
func Serve(ctx context.Context, opts Options, mtu int) error { return errUnsupported }

// StopProcess fails: the data plane needs Linux.
func StopProcess(ctx context.Context, opts Options) (bool, error) { return false, errUnsupported }

// NeedsUserspace fails: the data plane needs Linux.
func NeedsUserspace(opts Options) (bool, error) { return false, errUnsupported }
