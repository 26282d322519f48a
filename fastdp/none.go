package fastdp

import "context"

// ModeNone runs no data plane at all (gossip and IPAM only): the daemon
// still computes the desired config, and None accepts it and does nothing.
const ModeNone = "none"

// None returns a Dataplane that changes nothing on the host: for
// `--dataplane none`, so that the daemon has one code path whether or not a
// data plane runs. Safe for concurrent use.
func None() Dataplane { return none{} }

type none struct{}

func (none) Kind() string                               { return ModeNone }
func (none) Set(ctx context.Context, cfg *Config) error { return ctx.Err() }
func (none) Stats(context.Context) ([]PeerStats, error) { return nil, nil }
func (none) Close() error                               { return nil }
