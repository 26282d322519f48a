package testnet_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshnet/mesh/internal/testnet"
)

// A typical integration test: build the daemon, start it on every host,
// cut one host off and check the others notice.
func Example() {
	var t *testing.T // the test's t
	testnet.RequireRoot(t)
	bin := testnet.BuildBinary(t, "./cmd/mesh")
	n := testnet.New(t, testnet.Options{Hosts: 3})
	for _, h := range n.Hosts() {
		// Flags and environment are illustrative.
		h.Start(t, bin, []string{"launch", "--advertise-addr", h.Addr.String()}, []string{"MESH_PASSWORD=an example mesh password", "MESH_NAME=example"})
	}
	a := n.Hosts()[0]
	if err := n.Partition(n.Hosts()[:1], n.Hosts()[1:]); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 30*time.Second, 200*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := a.Run(ctx, bin, "status") // runs in a's namespaces
		return err
	})
	_ = a.Path("/var/lib/mesh") // a's state directory, readable from the test
	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
}
