package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/daemon"
)

// keygen writes a new random mesh key file. The key is never printed.
func keygen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mesh keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	setUsage(fs, stderr, "Usage: mesh keygen FILE\n\nWrites a new random mesh key to FILE (mode 0600; an existing FILE is never\noverwritten). Give the same file to every member with --key-file.\n")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	if err := daemon.Keygen(pos[0]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote a new mesh key to %s (mode 0600); give every member this file with --key-file\n", pos[0])
	return nil
}

// rotate asks the daemon to re-read its key and password files, or with
// --node-key to make itself a new WireGuard key.
func rotate(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh rotate", stderr)
	nodeKey := fs.Bool("node-key", false, "rotate this node's own WireGuard key instead")
	setUsage(fs, stderr, "Usage: mesh rotate [--node-key]\n\nRe-reads the mesh's key and password files: keys added there are accepted at\nonce and used once every member holds them; keys removed there are dropped.\nSee docs/architecture.md, \"Trust and keys\", for the whole procedure.\n\nFlags:\n")
	pos, err := parseInterspersed(fs, args)
	if err != nil || len(pos) != 0 {
		if err == nil {
			fs.Usage()
		}
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := api.NewClient(*socket).Rotate(ctx, *nodeKey)
	if err != nil {
		return err
	}
	if *nodeKey {
		fmt.Fprintf(stdout, "new node key, public key %s\n", r.PublicKey)
		return nil
	}
	fmt.Fprintf(stdout, "mesh keys: %s (gossip encrypted with %s)\n", strings.Join(r.KeyIDs, " "), r.GossipKeyID)
	if len(r.Added) > 0 {
		fmt.Fprintf(stdout, "added: %s\n", strings.Join(r.Added, " "))
	}
	if len(r.Dropped) > 0 {
		fmt.Fprintf(stdout, "dropped: %s\n", strings.Join(r.Dropped, " "))
	}
	return nil
}
