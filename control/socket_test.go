package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
)

// TestListen: the socket is 0600 in a 0700 directory, a stale socket file
// is replaced, a live daemon's is not; and the API client reaches the
// handlers through it with the codes and messages the handlers chose.
func TestListen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "mesh")
	path := filepath.Join(dir, "mesh.sock")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A stale file where the socket goes: a crashed daemon's.
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket file: %v", err)
	}
	f := &fake{}
	srv := &http.Server{Handler: Handler(backendOf(f)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", di.Mode().Perm())
	}

	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another mesh daemon is already serving") {
		t.Errorf("second Listen while the first serves: %v, want a refusal", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := api.NewClient(path)
	st, err := c.Status(ctx)
	if err != nil || st.Name != "n1" {
		t.Fatalf("status over the socket: %+v, %v", st, err)
	}
	f.err = Mark(ErrConflict, errors.New("refusing to remove b yet"))
	_, err = c.RemovePeer(ctx, "b")
	var re *api.RequestError
	if !errors.As(err, &re) || re.Code != http.StatusConflict || re.Message != "refusing to remove b yet" {
		t.Errorf("rmpeer refused over the socket: %v, want a 409 with the reason", err)
	}
}
