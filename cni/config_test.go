package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshnet/mesh/api"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		wantSocket string
		wantCode   uint
		wantMsg    string
	}{
		{name: "minimal", in: `{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni"}`, wantSocket: api.DefaultSocket},
		{name: "socket", in: `{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","socket":"/tmp/x.sock"}`, wantSocket: "/tmp/x.sock"},
		{name: "unknown fields ignored", in: `{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","colour":"blue","runtimeConfig":{"x":1}}`, wantSocket: api.DefaultSocket},
		{name: "malformed", in: `{"cniVersion":"1.1.0",`, wantCode: types.ErrDecodingFailure, wantMsg: "failed to decode network config"},
		{name: "socket of wrong type", in: `{"cniVersion":"1.1.0","name":"mesh","socket":5}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `field "socket" must be a string`},
		{name: "name of wrong type", in: `{"cniVersion":"1.1.0","name":["mesh"]}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `field "name"`},
		{name: "relative socket", in: `{"cniVersion":"1.1.0","name":"mesh","socket":"mesh.sock"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "absolute path"},
		{name: "missing name", in: `{"cniVersion":"1.1.0"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "missing network name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := parseConfig([]byte(tt.in))
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("parseConfig: %v", err)
				}
				if got := conf.socket(); got != tt.wantSocket {
					t.Errorf("socket = %q, want %q", got, tt.wantSocket)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("parseConfig error = %v, want a *types.Error", err)
			}
			if e.Code != tt.wantCode || !strings.Contains(e.Msg, tt.wantMsg) {
				t.Errorf("parseConfig error = code %d %q, want code %d containing %q", e.Code, e.Msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("0123456789abcdef0123456789abcdef", "eth0")
	if len(a) > 15 || !strings.HasPrefix(a, "vmesh") {
		t.Errorf("HostVethName = %q, want vmesh... of at most 15 characters", a)
	}
	if b := HostVethName("0123456789abcdef0123456789abcdef", "eth1"); a == b {
		t.Errorf("HostVethName is %q for both eth0 and eth1", a)
	}
	if b := HostVethName("0123456789abcdef0123456789abcdef", "eth0"); a != b {
		t.Errorf("HostVethName is not stable: %q then %q", a, b)
	}
}

func TestDaemonError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want uint
	}{
		{name: "unreachable", err: api.ErrDaemonUnreachable, want: types.ErrTryAgainLater},
		{name: "not ready", err: &api.RequestError{Code: 503, Message: "waiting"}, want: types.ErrTryAgainLater},
		{name: "refused", err: &api.RequestError{Code: 507, Message: "full"}, want: ErrDaemonRefused},
		{name: "other", err: errors.New("boom"), want: types.ErrIOFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := daemonError("do it", tt.err); got.Code != tt.want {
				t.Errorf("daemonError(%v).Code = %d, want %d", tt.err, got.Code, tt.want)
			}
		})
	}
}
