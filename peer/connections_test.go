package peer

import (
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

func TestConnState(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	tests := []struct {
		name      string
		handshake time.Duration // before now; 0 = never
		since     time.Duration // before now
		want      api.ConnState
	}{
		{name: "fresh handshake", handshake: time.Minute, since: time.Hour, want: api.ConnEstablished},
		{name: "handshake just fresh", handshake: HandshakeFresh - time.Second, since: time.Hour, want: api.ConnEstablished},
		{name: "stale handshake, long configured", handshake: HandshakeFresh + time.Second, since: time.Hour, want: api.ConnFailed},
		{name: "never, just configured", since: 10 * time.Second, want: api.ConnConnecting},
		{name: "never, grace over", since: ConnectGrace + time.Second, want: api.ConnFailed},
		{name: "stale handshake, reconfigured recently", handshake: time.Hour, since: time.Second, want: api.ConnConnecting},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hs time.Time
			if tt.handshake != 0 {
				hs = now.Add(-tt.handshake)
			}
			if got := connState(hs, now.Add(-tt.since), now); got != tt.want {
				t.Errorf("connState = %s, want %s", got, tt.want)
			}
		})
	}
}
