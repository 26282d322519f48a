// Command pause is the pod sandbox ("infra") process of the e2e cluster's
// pods: it holds the pod's namespaces, reaps zombies and exits on SIGINT or
// SIGTERM. It replaces the upstream pause image, which cannot be pulled in
// the test environment.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
