// Command mesh is the mesh daemon (`mesh launch`) and its command-line
// client (`mesh status`, `mesh connect`, ...). The client commands are thin:
// they ask the running daemon over its unix socket and format the answer.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/meshnet/mesh/api"
)

// version is set at build time by the Makefile.
var version = "dev"

const usage = `mesh: an encrypted mesh overlay network for containers

Usage:
  mesh launch [flags] [PEER...]     run the daemon in the foreground
  mesh status [peers|connections|ipam|policy] [-o json]
                                    show this node and the mesh as it sees it
  mesh connect PEER                 add a peer to join (host or host:port)
  mesh forget PEER                  stop trying a peer and forget it
  mesh rmpeer NAME                  remove a dead peer: its ranges go to their heirs
  mesh forget-identity NAME         on this node, release NAME's binding to its signing identity
  mesh keygen FILE                  write a new random mesh key file (for --key-file)
  mesh rotate [--node-key]          re-read the mesh key files, or renew this node's WireGuard key
  mesh leave                        leave the mesh gracefully and stop the daemon
                                    (a stop by SIGTERM is a restart, not a leave)
  mesh reset [--state]              remove every interface, route and file mesh made on this host
  mesh attach [--ifname eth0] [-o json] TARGET
                                    give a container (PID, netns name or path) a mesh address
  mesh attach --list [-o json]      list this node's attachments
  mesh detach [--ifname NAME] TARGET
                                    remove an attachment and release its address
  mesh completion bash|zsh|fish     print a shell completion script
  mesh version [-o json]            print the version

Run "mesh COMMAND -h" for the flags of a command.

Exit codes: 0 success, 1 failure, 2 invalid usage, 3 the daemon cannot be
reached (is "mesh launch" running?).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit codes, documented in the usage text and docs/standalone.md.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitUnreachable = 3
)

// errUsage means the error was already explained along with the usage.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "launch":
		err = launch(rest, stderr)
	case "status":
		err = status(rest, stdout, stderr)
	case "connect", "forget":
		err = peerCommand(cmd, rest, stdout, stderr)
	case "rmpeer":
		err = rmpeer(rest, stdout, stderr)
	case "forget-identity":
		err = forgetIdentity(rest, stdout, stderr)
	case "leave":
		err = leave(rest, stdout, stderr)
	case "reset":
		err = reset(rest, stdout, stderr)
	case "keygen":
		err = keygen(rest, stdout, stderr)
	case "rotate":
		err = rotate(rest, stdout, stderr)
	case "attach":
		err = attachCmd(rest, stdout, stderr)
	case "detach":
		err = detachCmd(rest, stdout, stderr)
	case "completion":
		err = completion(rest, stdout, stderr)
	case "version", "--version":
		err = versionCmd(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "mesh: unknown command %q\n\n%s", cmd, usage)
		return exitUsage
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.Is(err, api.ErrDaemonUnreachable):
		fmt.Fprintf(stderr, "mesh: %v\n", err)
		return exitUnreachable
	default:
		fmt.Fprintf(stderr, "mesh: %v\n", err)
		return exitFailure
	}
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments ("mesh status peers -o json"), which the standard
// flag package alone does not allow.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
