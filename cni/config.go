package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshnet/mesh/api"
)

// NetConf is the network configuration mesh-cni reads on stdin, e.g.
//
//	{"cniVersion":"1.1.0","name":"mesh","type":"mesh-cni","socket":"/run/mesh/mesh.sock"}
//
// Unknown fields are ignored (the runtime adds its own); a known field of
// the wrong type is an error, as silently ignoring a mistyped socket would
// send the plugin to the wrong daemon.
type NetConf struct {
	types.PluginConf
	// Socket is the daemon's control socket; "" means api.DefaultSocket.
	Socket string `json:"socket,omitempty"`
}

// socket returns the socket to use.
func (c *NetConf) socket() string {
	if c.Socket == "" {
		return api.DefaultSocket
	}
	return c.Socket
}

// parseConfig decodes and validates the network configuration. Its errors are
// *types.Error: 6 when the bytes are not JSON at all, 7 when they are JSON but
// not a valid mesh-cni configuration.
func parseConfig(data []byte) (*NetConf, error) {
	var conf NetConf
	if err := json.Unmarshal(data, &conf); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("invalid network config: field %q must be a %s, not a JSON %s",
					strings.TrimPrefix(typeErr.Field, "PluginConf."), typeErr.Type, typeErr.Value), "")
		}
		return nil, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("failed to decode network config: %v", err), "")
	}
	if conf.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: missing network name (\"name\")", "")
	}
	if conf.Socket != "" && !filepath.IsAbs(conf.Socket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("invalid network config: socket %q must be an absolute path", conf.Socket), "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("failed to decode prevResult: %v", err), "")
	}
	return &conf, nil
}
