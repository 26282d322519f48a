package main

import (
	"strings"
	"testing"
)

// TestRunRefusesBadArguments: every argument error is reported with what
// was wrong, before anything touches the host.
func TestRunRefusesBadArguments(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unknown flag", args: []string{"--bogus"}, want: "bogus"},
		{name: "stray argument", args: []string{"extra"}, want: "unexpected arguments"},
		{name: "bad log level", args: []string{"--log-level", "loud"}, want: "--log-level"},
		{name: "bad device name", args: []string{"--device", "a/b"}, want: "invalid interface name"},
		{name: "bad MTU", args: []string{"--mtu", "100"}, want: "MTU 100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr strings.Builder
			err := run(tt.args, &stderr)
			if err == nil || !strings.Contains(err.Error()+stderr.String(), tt.want) {
				t.Errorf("run(%q) = %v (stderr %q), want an error about %q", tt.args, err, stderr.String(), tt.want)
			}
		})
	}
}
