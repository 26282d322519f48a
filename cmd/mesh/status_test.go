package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/meshnet/mesh/api"
)

// dualStatus is sampleStatus of a dual-stack node.
func dualStatus() *api.Status {
	st := sampleStatus()
	st.OverlayIP6 = "fd32::1"
	st.IPAM6 = &api.IPAM{
		Range: "fd32::/48", Status: "ready", Owned: []string{"fd32::/82"}, Allocated: 7, Free: 70368744177656,
		Ranges: []api.RangeInfo{{CIDR: "fd32::/82", Owner: "host-b"}},
		Peers: []api.IPAMPeer{
			{Name: "host-b", Addresses: 70368744177664, Percent: 25, Reachable: true},
		},
		Problems:     []string{"member host-c runs no IPv6 range: its pods get no IPv6 address (give every node the same --ipalloc-range values)"},
		SignedStates: &api.SignedStates{Sending: true},
	}
	return st
}

// serveStatus answers GET /v1/status on a unix socket with st and returns
// the socket's path.
func serveStatus(t *testing.T, st *api.Status) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "mesh.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestStatusIPAMJSON: `mesh status ipam -o json` shows the IPv6 section
// beside the IPv4 one in a dual-stack mesh, and an IPv4-only mesh keeps
// exactly the fields it had (the JSON contract only gains fields).
func TestStatusIPAMJSON(t *testing.T) {
	v4only := sampleStatus()
	tests := []struct {
		name    string
		st      *api.Status
		wantV6  bool
		wantNil bool
	}{
		{"IPv4 only", v4only, false, false},
		{"dual-stack", dualStatus(), true, false},
		{"no IPAM", &api.Status{Name: "solo"}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := serveStatus(t, tt.st)
			var out, errb bytes.Buffer
			if code := run([]string{"status", "ipam", "-o", "json", "--socket", sock}, &out, &errb); code != 0 {
				t.Fatalf("code %d, stderr %q", code, errb.String())
			}
			if tt.wantNil {
				if s := bytes.TrimSpace(out.Bytes()); string(s) != "null" {
					t.Fatalf("no IPAM printed %q, want null", s)
				}
				return
			}
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(out.Bytes(), &fields); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
			// The IPv4 section's own fields, at the top level as before.
			want, _ := json.Marshal(tt.st.IPAM)
			var wantFields map[string]json.RawMessage
			_ = json.Unmarshal(want, &wantFields)
			for k, v := range wantFields {
				var got, want any
				_ = json.Unmarshal(fields[k], &got)
				_ = json.Unmarshal(v, &want)
				if !reflect.DeepEqual(got, want) {
					t.Errorf("field %q = %s, want %s", k, fields[k], v)
				}
			}
			for _, k := range []string{"range", "allocated", "free", "owned", "ranges"} {
				if _, ok := fields[k]; !ok {
					t.Errorf("field %q missing from %s", k, out.String())
				}
			}
			_, has6 := fields["ipam6"]
			if has6 != tt.wantV6 {
				t.Fatalf("ipam6 present %v, want %v: %s", has6, tt.wantV6, out.String())
			}
			if !tt.wantV6 {
				keys := make([]string, 0, len(fields))
				for k := range fields {
					keys = append(keys, k)
				}
				wantKeys := make([]string, 0, len(wantFields))
				for k := range wantFields {
					wantKeys = append(wantKeys, k)
				}
				slices.Sort(keys)
				slices.Sort(wantKeys)
				if !slices.Equal(keys, wantKeys) {
					t.Fatalf("IPv4-only fields %v, want exactly %v", keys, wantKeys)
				}
				return
			}
			var got6 api.IPAM
			if err := json.Unmarshal(fields["ipam6"], &got6); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&got6, tt.st.IPAM6) {
				t.Fatalf("ipam6 = %+v, want %+v", got6, *tt.st.IPAM6)
			}
		})
	}
}
