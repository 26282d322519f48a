package cni

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzParseConfig: whatever the runtime puts on stdin, parseConfig returns
// a CNI error of a decoding or configuration kind (never a panic, never
// another error), or a configuration with a name and, if any, an absolute
// socket path.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","socket":"/run/mesh/mesh.sock"}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"mesh","type":"mesh-cni","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.32.0.2/12"}]}}`))
	f.Add([]byte(`{"name":"mesh","socket":7}`))
	f.Add([]byte(`{"name":"mesh","socket":"relative"}`))
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"m","prevResult":{"ips":[{"version":"4","address":"x"}]}}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		conf, err := parseConfig(b)
		if err != nil {
			var cerr *types.Error
			if !errors.As(err, &cerr) || (cerr.Code != types.ErrDecodingFailure && cerr.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("error %v (%T) is not a CNI decoding or configuration error", err, err)
			}
			if cerr.Msg == "" {
				t.Fatal("CNI error without a message")
			}
			return
		}
		if conf.Name == "" {
			t.Fatal("configuration without a network name accepted")
		}
		if conf.Socket != "" && !filepath.IsAbs(conf.Socket) {
			t.Fatalf("relative socket %q accepted", conf.Socket)
		}
	})
}
