package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/mesh"
)

// Daemon is a running node. Create it with Start, stop it with Stop.
type Daemon struct {
	cfg      Config
	log      *slog.Logger
	id       Identity
	key      crypto.PrivateKey
	members  *mesh.Membership
	server   *http.Server
	listener net.Listener
	served   chan error
}

// Start brings the node up: identity, keys, gossip, control socket. It
// returns once the socket is serving; joining peers goes on in the
// background. On error, everything started so far is stopped again.
func Start(cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("failed to create state dir %q: %w", cfg.StateDir, err)
	}
	id, err := loadIdentity(cfg.path("identity.json"), cfg.Name)
	if err != nil {
		return nil, err
	}
	key, err := crypto.LoadOrCreatePrivateKey(cfg.path("wireguard.key"))
	if err != nil {
		return nil, err
	}
	pub, err := key.Public()
	if err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: log, id: id, key: key, served: make(chan error, 1)}
	defer func() {
		if err != nil {
			d.close()
		}
	}()

	mc := mesh.DefaultConfig()
	mc.Name = id.Name
	mc.Meta = mesh.Meta{PeerID: id.PeerID, Version: cfg.Version, PublicKey: pub.String()}
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.Port = cfg.Port
	mc.Targets = cfg.Peers
	mc.RememberedFile = cfg.path("peers.json")
	mc.Logger = log.With("component", "mesh")
	if cfg.Insecure && len(cfg.Password) == 0 {
		log.Warn("running without a mesh password (--insecure): gossip is neither encrypted nor authenticated, and anyone who can reach port 6783 can join")
	} else {
		if mc.GossipKey, err = crypto.GossipKey(cfg.Password); err != nil {
			return nil, err
		}
	}
	if d.members, err = mesh.New(mc); err != nil {
		return nil, err
	}

	if d.listener, err = listenSocket(cfg.Socket); err != nil {
		return nil, err
	}
	d.server = &http.Server{Handler: d.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { d.served <- d.server.Serve(d.listener) }()
	log.Info("mesh daemon started", "name", id.Name, "peerID", id.PeerID, "gossip", d.members.LocalAddr(), "socket", cfg.Socket, "version", cfg.Version)
	return d, nil
}

// Stop leaves the mesh gracefully, then stops gossip and the socket.
func (d *Daemon) Stop() error {
	if err := d.members.Leave(3 * time.Second); err != nil {
		d.log.Warn("leaving the mesh failed", "error", err)
	}
	d.close()
	d.log.Info("mesh daemon stopped")
	return nil
}

// Done returns a channel that receives the control server's error if it
// stops serving on its own.
func (d *Daemon) Done() <-chan error { return d.served }

func (d *Daemon) close() {
	if d.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		d.server.Shutdown(ctx)
		cancel()
	}
	if d.listener != nil {
		os.Remove(d.cfg.Socket)
	}
	if d.members != nil {
		d.members.Close()
	}
}

// listenSocket opens the control socket with mode 0600 in a 0700
// directory. A socket file left by a crashed daemon is replaced; one that a
// live daemon answers on is not.
func listenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("failed to create socket directory for %q: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another mesh daemon is already serving on %q", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("failed to remove stale socket %q: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("failed to restrict socket %q to root: %w", path, err)
	}
	return l, nil
}
