// Package daemon wires membership, IPAM and the data plane together and
// serves the local control API. It is what `mesh launch` runs.
package daemon

import (
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/mesh"
)

// Config is the daemon's configuration. Start from DefaultConfig.
type Config struct {
	Name          string
	AdvertiseAddr netip.Addr
	Port          int
	StateDir      string
	Socket        string
	// Password derives every shared key. Empty only with Insecure.
	Password []byte
	Insecure bool
	// Peers are the targets named at launch, as host or host:port.
	Peers   []string
	Version string
	Logger  *slog.Logger
}

// DefaultConfig returns the defaults documented in `mesh launch --help`.
func DefaultConfig() Config {
	return Config{
		Port:     mesh.DefaultPort,
		StateDir: "/var/lib/mesh",
		Socket:   api.DefaultSocket,
		Version:  "dev",
		Logger:   slog.Default(),
	}
}

// ErrNoPassword is returned when neither a password nor --insecure is given.
var ErrNoPassword = errors.New("no mesh password: give --password-file FILE or set MESH_PASSWORD, or run with --insecure to gossip unencrypted")

func (c *Config) path(name string) string { return filepath.Join(c.StateDir, name) }

// Validate checks the configuration and normalises peer addresses.
func (c *Config) Validate() error {
	if len(c.Password) == 0 && !c.Insecure {
		return ErrNoPassword
	}
	if c.Port < 1 || c.Port > 65535 {
		return errors.New("--port must be from 1 to 65535")
	}
	for i, p := range c.Peers {
		a, err := mesh.ParsePeerAddress(p, c.Port)
		if err != nil {
			return err
		}
		c.Peers[i] = a
	}
	return nil
}
