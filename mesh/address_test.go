package mesh

import (
	"strings"
	"testing"
)

func TestParsePeerAddress(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{name: "ip without port", in: "192.0.2.1", want: "192.0.2.1:6783"},
		{name: "ip with port", in: "192.0.2.1:7000", want: "192.0.2.1:7000"},
		{name: "hostname", in: "node-1.example.", want: "node-1.example.:6783"},
		{name: "hostname with port", in: "node1:1", want: "node1:1"},
		{name: "ipv6 bare", in: "2001:db8::1", want: "[2001:db8::1]:6783"},
		{name: "ipv6 with port", in: "[2001:db8::1]:7000", want: "[2001:db8::1]:7000"},
		{name: "surrounding space", in: "  192.0.2.1 ", want: "192.0.2.1:6783"},
		{name: "port too large", in: "host:99999", wantErr: "port \"99999\" is not a number from 1 to 65535"},
		{name: "port zero", in: "host:0", wantErr: "from 1 to 65535"},
		{name: "port not a number", in: "host:http", wantErr: "from 1 to 65535"},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "only port", in: ":6783", wantErr: "empty host"},
		{name: "garbage", in: "no/such host!", wantErr: "neither an IP address nor a host name"},
		{name: "label too long", in: strings.Repeat("a", 64), wantErr: "neither"},
		{name: "unclosed bracket", in: "[2001:db8::1", wantErr: "invalid peer address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePeerAddress(tt.in, 6783)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePeerAddress(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParsePeerAddress(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}
