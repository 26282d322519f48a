package cni

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/meshnet/mesh/api"
)

// TestAllocateOlderDaemon: a daemon that predates the network field refuses
// it as an unknown field (its decoder disallows unknown fields); the plugin
// asks again without it, so a new plugin still works with an old daemon.
func TestAllocateOlderDaemon(t *testing.T) {
	dir, err := os.MkdirTemp("", "meshcni-old-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "mesh.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		// The request type of the daemon before the network field.
		var req struct {
			ContainerID string `json:"containerID"`
			IfName      string `json:"ifName"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(api.Error{Error: "invalid request body: " + err.Error()})
			return
		}
		json.NewEncoder(w).Encode(api.Allocation{ContainerID: req.ContainerID, IfName: req.IfName, Address: "10.32.0.2/32", Gateway: "10.32.0.1"})
	})}
	go srv.Serve(ln)
	defer srv.Close()

	a, err := allocate(context.Background(), api.NewClient(sock), api.AllocateRequest{ContainerID: "c1", IfName: "eth0", Network: "mesh", PodNamespace: "ns", PodName: "p"})
	if err != nil {
		t.Fatalf("allocate from an older daemon: %v", err)
	}
	if a.Address != "10.32.0.2/32" || calls.Load() != 2 {
		t.Fatalf("got %+v after %d calls, want 10.32.0.2/32 after 2 (refused, then without the network)", a, calls.Load())
	}
}
