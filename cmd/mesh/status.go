package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/meshnet/mesh/api"
)

func clientFlags(name string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", api.DefaultSocket, "unix socket of the daemon's control API")
	return fs, socket
}

func status(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh status", stderr)
	output := fs.String("o", "human", "output format: human or json")
	setUsage(fs, stderr, "Usage: mesh status [peers|connections|ipam|policy] [-o json]\n\nFlags:\n")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	what := ""
	if len(pos) > 1 {
		fmt.Fprintf(stderr, "mesh status: too many arguments: %v\n", pos)
		return errUsage
	}
	if len(pos) == 1 {
		what = pos[0]
	}
	switch what {
	case "", "peers", "connections", "ipam", "policy":
	default:
		fmt.Fprintf(stderr, "mesh status: unknown subject %q (want peers, connections, ipam or policy)\n", what)
		return errUsage
	}
	if *output != "human" && *output != "json" {
		fmt.Fprintf(stderr, "mesh status: unknown output format %q (want human or json)\n", *output)
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := api.NewClient(*socket).Status(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	if *output == "json" {
		switch what {
		case "peers":
			return writeIndented(stdout, st.Peers)
		case "connections":
			return writeIndented(stdout, orEmpty(st.Connections))
		case "ipam":
			if st.IPAM == nil {
				return writeIndented(stdout, st.IPAM) // null, as always
			}
			return writeIndented(stdout, api.IPAMSections{IPAM: st.IPAM, IPAM6: st.IPAM6})
		case "policy":
			return writeIndented(stdout, orEmpty(st.Policies))
		}
		return writeIndented(stdout, st)
	}
	switch what {
	case "peers":
		formatPeers(stdout, st)
	case "connections":
		formatConnections(stdout, st, now)
	case "ipam":
		formatIPAM(stdout, st)
	case "policy":
		formatPolicies(stdout, st)
	default:
		formatStatus(stdout, st, now)
	}
	return nil
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func peerCommand(cmd string, args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh "+cmd, stderr)
	setUsage(fs, stderr, "Usage: mesh "+cmd+" PEER\n\nFlags:\n")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "Usage: mesh %s PEER\n", cmd)
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := api.NewClient(*socket)
	if cmd == "connect" {
		err = c.Connect(ctx, pos[0])
	} else {
		err = c.Forget(ctx, pos[0])
	}
	if err != nil {
		return err
	}
	return nil
}
