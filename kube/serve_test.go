package kube

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServe: a failing run is logged and started again after the retry
// interval; Serve returns once its context ends, also while it waits.
func TestServe(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{mu: &mu, w: &buf}, nil))
	ctx, cancel := context.WithCancel(context.Background())
	runs := make(chan time.Time, 10)
	served := make(chan struct{})
	go func() {
		Serve(ctx, log, "thing failed; retrying", 50*time.Millisecond, func(context.Context) error {
			runs <- time.Now()
			return errors.New("API down")
		})
		close(served)
	}()
	first := <-runs
	var second time.Time
	select {
	case second = <-runs:
	case <-time.After(30 * time.Second):
		t.Fatal("no second run 30 s after a failure")
	}
	if gap := second.Sub(first); gap < 50*time.Millisecond {
		t.Errorf("run again after %v, want at least the retry interval", gap)
	}
	cancel()
	select {
	case <-served:
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	if !strings.Contains(out, "thing failed; retrying") || !strings.Contains(out, "API down") {
		t.Errorf("failure not logged with its error:\n%s", out)
	}
}

type syncWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
