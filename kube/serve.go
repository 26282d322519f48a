package kube

import (
	"context"
	"log/slog"
	"time"
)

// DefaultRetryInterval is how long Serve waits after run failed: long
// enough not to hammer an API server that is down, short enough that work
// resumes soon after it is back.
const DefaultRetryInterval = 10 * time.Second

// Serve runs run until ctx ends, which it blocks for: when run fails (an
// API server unreachable, a missing permission), the error is logged with
// msg and run starts again after retry (DefaultRetryInterval when 0). It is
// the one restart loop of the parts that follow the Kubernetes API.
func Serve(ctx context.Context, log *slog.Logger, msg string, retry time.Duration, run func(context.Context) error) {
	if retry <= 0 {
		retry = DefaultRetryInterval
	}
	for ctx.Err() == nil {
		if err := run(ctx); err != nil {
			log.Error(msg, "error", err, "retryIn", retry)
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
		}
	}
}

// Serve watches until ctx ends, starting again after a failure (see the
// function Serve).
func (w *Watcher) Serve(ctx context.Context) {
	Serve(ctx, w.log, "watching Kubernetes nodes failed; retrying", 0, w.Run)
}
