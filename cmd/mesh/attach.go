package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/attach"
)

// attachTimeout is longer than the daemon's own bound on an attach, so the
// daemon's error, not a client timeout, is what the user sees.
const attachTimeout = 90 * time.Second

const attachUsage = `Usage: mesh attach [flags] TARGET
       mesh attach --list [-o json]

Gives the network namespace TARGET an interface on the mesh with an address,
through the installed CNI plugin and network config, as a container runtime
would. Attaching the same namespace again returns the same address. The
daemon releases the address once the namespace is gone (the process exited,
the netns was deleted), or on "mesh detach".

TARGET is one of:
  PID          a process's namespace (/proc/PID/ns/net): for Docker use
               $(docker inspect -f '{{.State.Pid}}' CONTAINER), for Podman
               $(podman inspect -f '{{.State.Pid}}' CONTAINER)
  NAME         a namespace made with "ip netns add NAME" (/run/netns/NAME)
  PATH         any network namespace file, e.g. /var/run/netns/cni-1234

Flags:
`

const detachUsage = `Usage: mesh detach [flags] TARGET

Removes the interface "mesh attach" made in TARGET (see "mesh attach -h")
and releases its address. Detaching what is not attached succeeds.

Flags:
`

func attachCmd(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh attach", stderr)
	ifName := fs.String("ifname", attach.DefaultIfName, "interface name inside the namespace")
	output := fs.String("o", "human", "output format: human or json")
	list := fs.Bool("list", false, "list this node's attachments")
	setUsage(fs, stderr, attachUsage)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if err := checkOutput("mesh attach", *output, stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), attachTimeout)
	defer cancel()
	c := api.NewClient(*socket)
	if *list {
		if len(pos) != 0 {
			fmt.Fprintln(stderr, "mesh attach: --list takes no TARGET")
			return errUsage
		}
		as, err := c.Attachments(ctx)
		if err != nil {
			return err
		}
		if *output == "json" {
			return writeIndented(stdout, orEmpty(as))
		}
		formatAttachments(stdout, as)
		return nil
	}
	netns, err := oneTarget("mesh attach", pos, stderr)
	if err != nil {
		return err
	}
	a, err := c.Attach(ctx, netns, *ifName)
	if err != nil {
		return err
	}
	if *output == "json" {
		return writeIndented(stdout, a)
	}
	fmt.Fprintln(stdout, attachmentAddresses(*a, " "))
	return nil
}

func detachCmd(args []string, stdout, stderr io.Writer) error {
	fs, socket := clientFlags("mesh detach", stderr)
	ifName := fs.String("ifname", "", "interface name inside the namespace (default: every interface mesh attached there)")
	output := fs.String("o", "human", "output format: human or json")
	setUsage(fs, stderr, detachUsage)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return errUsage
	}
	if err := checkOutput("mesh detach", *output, stderr); err != nil {
		return err
	}
	netns, err := oneTarget("mesh detach", pos, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), attachTimeout)
	defer cancel()
	as, err := api.NewClient(*socket).Detach(ctx, netns, *ifName)
	if err != nil {
		return err
	}
	if *output == "json" {
		return writeIndented(stdout, api.DetachResult{Detached: orEmpty(as)})
	}
	if len(as) == 0 {
		fmt.Fprintf(stdout, "nothing attached at %s\n", netns)
	}
	for _, a := range as {
		fmt.Fprintf(stdout, "detached %s %s (%s)\n", a.NetNS, a.IfName, attachmentAddresses(a, ", "))
	}
	return nil
}

func oneTarget(cmd string, pos []string, stderr io.Writer) (string, error) {
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "%s: want exactly one TARGET (PID, netns name or path), got %d\n", cmd, len(pos))
		return "", errUsage
	}
	netns, err := attach.TargetPath(pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
		return "", errUsage
	}
	return netns, nil
}

func checkOutput(cmd, output string, stderr io.Writer) error {
	if output != "human" && output != "json" {
		fmt.Fprintf(stderr, "%s: unknown output format %q (want human or json)\n", cmd, output)
		return errUsage
	}
	return nil
}

// attachmentAddresses is a's address, followed in a dual-stack mesh by
// its IPv6 address after sep: an IPv4-only mesh prints what it always did.
func attachmentAddresses(a api.Attachment, sep string) string {
	if a.Address6 == "" {
		return a.Address
	}
	return a.Address + sep + a.Address6
}

// formatAttachments prints one line per attachment; the IPV6 column only
// when some attachment has an IPv6 address besides its first one (a
// dual-stack mesh).
func formatAttachments(w io.Writer, as []api.Attachment) {
	if len(as) == 0 {
		fmt.Fprintln(w, "no attachments")
		return
	}
	dual := slices.ContainsFunc(as, func(a api.Attachment) bool { return a.Address6 != "" })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if dual {
		fmt.Fprintln(tw, "NETNS\tIFNAME\tADDRESS\tIPV6\tCREATED")
	} else {
		fmt.Fprintln(tw, "NETNS\tIFNAME\tADDRESS\tCREATED")
	}
	for _, a := range as {
		addr := a.Address
		if addr == "" {
			addr = "(attaching)"
		}
		if dual {
			addr6 := a.Address6
			if addr6 == "" {
				addr6 = "-"
			}
			addr += "\t" + addr6
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.NetNS, a.IfName, addr, a.Created)
	}
	tw.Flush()
}
