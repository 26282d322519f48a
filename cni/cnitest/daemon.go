// Package cnitest holds test doubles for mesh-cni: a fake daemon serving the
// IPAM part of the control API over a unix socket, and throwaway network
// namespaces with a bridge wired like fastdp wires the node's.
//
// The fake daemon follows the contract of package api, so the plugin's tests
// can later be run against the real daemon and compared.
package cnitest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/meshnet/mesh/api"
)

// DefaultMTU is the MTU the fake daemon hands out (fastdp's default).
const DefaultMTU = 1420

// FakeDaemon is an in-process daemon with an in-memory allocator.
type FakeDaemon struct {
	// Socket is the unix socket it listens on.
	Socket string
	// ClusterRange and Owned are the whole overlay range and this node's
	// part of it; Gateway is the node's overlay IP, the first address of
	// Owned after the network address.
	ClusterRange netip.Prefix
	Owned        netip.Prefix
	Gateway      netip.Addr
	// ClusterRange6, Owned6 and Gateway6 are the same for IPv6, set by
	// EnableIPv6 (a dual-stack daemon); zero otherwise.
	ClusterRange6 netip.Prefix
	Owned6        netip.Prefix
	Gateway6      netip.Addr

	srv *http.Server
	ln  net.Listener

	mu         sync.Mutex
	bridge     string
	mtu        int
	ipamStatus string
	allocs     map[key]api.Allocation
	used       map[netip.Addr]bool
}

type key struct{ containerID, ifName string }

// NewFakeDaemon starts a fake daemon owning owned, a part of clusterRange,
// listening on a socket in a fresh temporary directory (short, as unix
// socket paths are limited to 107 bytes and test names can be long). It
// stops when t ends.
func NewFakeDaemon(t testing.TB, clusterRange, owned string) *FakeDaemon {
	t.Helper()
	d := &FakeDaemon{
		ClusterRange: netip.MustParsePrefix(clusterRange),
		Owned:        netip.MustParsePrefix(owned).Masked(),
		bridge:       "mesh",
		mtu:          DefaultMTU,
		ipamStatus:   "ready",
		allocs:       map[key]api.Allocation{},
		used:         map[netip.Addr]bool{},
	}
	d.Gateway = d.Owned.Addr().Next()
	dir, err := os.MkdirTemp("", "meshcni-")
	if err != nil {
		t.Fatalf("failed to create socket directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d.Socket = filepath.Join(dir, "mesh.sock")
	d.ln, err = net.Listen("unix", d.Socket)
	if err != nil {
		t.Fatalf("failed to listen on %q: %v", d.Socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/ipam/allocate", d.allocate)
	mux.HandleFunc("POST /v1/ipam/release", d.release)
	mux.HandleFunc("POST /v1/ipam/gc", d.gc)
	mux.HandleFunc("GET /v1/ipam/allocations", d.list)
	mux.HandleFunc("GET /v1/status", d.status)
	d.srv = &http.Server{Handler: mux}
	go d.srv.Serve(d.ln)
	t.Cleanup(d.Stop)
	return d
}

// EnableIPv6 makes d a dual-stack daemon: every allocation carries an IPv6
// address of owned (a part of clusterRange) besides the IPv4 one. Call it
// before NewHost, which puts the IPv6 gateway on the bridge.
func (d *FakeDaemon) EnableIPv6(clusterRange, owned string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ClusterRange6 = netip.MustParsePrefix(clusterRange)
	d.Owned6 = netip.MustParsePrefix(owned).Masked()
	d.Gateway6 = d.Owned6.Addr().Next()
}

// Stop stops the daemon, as if `mesh launch` had exited: the socket is
// removed and connections are refused.
func (d *FakeDaemon) Stop() { d.srv.Close() }

// SetBridge sets the bridge name the allocations carry.
func (d *FakeDaemon) SetBridge(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bridge = name
}

// SetMTU sets the MTU the allocations carry.
func (d *FakeDaemon) SetMTU(mtu int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mtu = mtu
}

// SetIPAMStatus sets the status reported by GET /v1/status; "" reports no
// IPAM at all.
func (d *FakeDaemon) SetIPAMStatus(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ipamStatus = s
}

// Allocations returns the current allocations, sorted by address.
func (d *FakeDaemon) Allocations() []api.Allocation {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sorted()
}

func (d *FakeDaemon) sorted() []api.Allocation {
	out := make([]api.Allocation, 0, len(d.allocs))
	for _, a := range d.allocs {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		return netip.MustParsePrefix(out[i].Address).Addr().Less(netip.MustParsePrefix(out[j].Address).Addr())
	})
	return out
}

func (d *FakeDaemon) allocate(w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if !decode(w, r, &req) {
		return
	}
	if req.ContainerID == "" || req.IfName == "" {
		writeError(w, http.StatusBadRequest, "containerID and ifName are required")
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	k := key{req.ContainerID, req.IfName}
	if a, ok := d.allocs[k]; ok {
		a.Network = ""
		writeJSON(w, a)
		return
	}
	addr, ok := d.free()
	if !ok {
		writeError(w, http.StatusInsufficientStorage, fmt.Sprintf("range %s is full", d.Owned))
		return
	}
	a := api.Allocation{
		ContainerID:  req.ContainerID,
		IfName:       req.IfName,
		Address:      netip.PrefixFrom(addr, addr.BitLen()).String(),
		Gateway:      d.Gateway.String(),
		Bridge:       d.bridge,
		MTU:          d.mtu,
		ClusterRange: d.ClusterRange.String(),
	}
	if d.Owned6.IsValid() {
		addr6, ok := d.free6()
		if !ok {
			// Nothing taken: the daemon rolls the IPv4 address back.
			writeError(w, http.StatusInsufficientStorage, fmt.Sprintf("range %s is full", d.Owned6))
			return
		}
		d.used[addr6] = true
		a.Address6 = netip.PrefixFrom(addr6, addr6.BitLen()).String()
		a.Gateway6 = d.Gateway6.String()
		a.ClusterRange6 = d.ClusterRange6.String()
	}
	d.used[addr] = true
	stored := a
	stored.Network = req.Network // listed, not answered, as by the daemon
	d.allocs[k] = stored
	writeJSON(w, a)
}

// free returns the lowest free address of Owned after the gateway, below
// the broadcast address.
func (d *FakeDaemon) free() (netip.Addr, bool) {
	for a := d.Gateway.Next(); d.Owned.Contains(a); a = a.Next() {
		if !d.Owned.Contains(a.Next()) {
			break // keep the broadcast address free, as a real IPAM would
		}
		if !d.used[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// free6 returns the lowest free address of Owned6 after its gateway.
func (d *FakeDaemon) free6() (netip.Addr, bool) {
	for a := d.Gateway6.Next(); d.Owned6.Contains(a); a = a.Next() {
		if !d.used[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (d *FakeDaemon) release(w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	if !decode(w, r, &req) {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop(key{req.ContainerID, req.IfName})
	w.WriteHeader(http.StatusNoContent)
}

func (d *FakeDaemon) drop(k key) {
	if a, ok := d.allocs[k]; ok {
		delete(d.used, netip.MustParsePrefix(a.Address).Addr())
		if a.Address6 != "" {
			delete(d.used, netip.MustParsePrefix(a.Address6).Addr())
		}
		delete(d.allocs, k)
	}
}

func (d *FakeDaemon) gc(w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if !decode(w, r, &req) {
		return
	}
	valid := map[key]bool{}
	for _, v := range req.Valid {
		valid[key{v.ContainerID, v.IfName}] = true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for k, a := range d.allocs {
		// As the daemon: only the named network's, never an unknown one's.
		if !valid[k] && req.Network != "" && a.Network == req.Network {
			d.drop(k)
			n++
		}
	}
	writeJSON(w, api.GCResult{Released: n})
}

func (d *FakeDaemon) list(w http.ResponseWriter, _ *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	writeJSON(w, d.sorted())
}

func (d *FakeDaemon) status(w http.ResponseWriter, _ *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := api.Status{Name: "fake", PeerID: "fake", Version: "test", OverlayIP: d.Gateway.String(), MTU: d.mtu}
	if d.ipamStatus != "" {
		st.IPAM = &api.IPAM{
			Range:     d.ClusterRange.String(),
			Status:    d.ipamStatus,
			Owned:     []string{d.Owned.String()},
			Allocated: len(d.allocs),
		}
		if d.ipamStatus != "ready" {
			st.IPAM.Problems = []string{"fake daemon told to be " + d.ipamStatus}
		}
	}
	writeJSON(w, st)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request: "+err.Error())
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(api.Error{Error: msg})
}
