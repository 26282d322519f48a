package main

import (
	"flag"
	"fmt"
	"io"
	"runtime"

	"github.com/meshnet/mesh/daemon"
)

// versionInfo is `mesh version -o json`; fields are only ever added.
type versionInfo struct {
	Version   string `json:"version"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
	// Kubernetes: this build runs --kube itself (mesh-kube); false for
	// make build's mesh, which runs mesh-kube for --kube.
	Kubernetes bool `json:"kubernetes"`
}

func versionCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mesh version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	output := fs.String("o", "human", "output format: human or json")
	setUsage(fs, stderr, "Usage: mesh version [-o json]\n\nFlags:\n")
	if pos, err := parseInterspersed(fs, args); err != nil || len(pos) != 0 {
		return errUsage
	}
	if err := checkOutput("mesh version", *output, stderr); err != nil {
		return err
	}
	if *output == "json" {
		return writeIndented(stdout, versionInfo{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
			Kubernetes: daemon.KubeSupport})
	}
	fmt.Fprintln(stdout, version)
	return nil
}
