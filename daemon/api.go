package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/mesh"
)

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Status(r))
	})
	mux.HandleFunc("POST /v1/connect", d.handlePeer(func(addr string) error {
		d.members.Connect(addr)
		d.log.Info("added peer target", "peer", addr)
		return nil
	}))
	mux.HandleFunc("POST /v1/forget", d.handlePeer(func(addr string) error {
		if !d.members.Forget(addr) {
			return fmt.Errorf("%w: %s is neither a target nor a remembered peer", errNotFound, addr)
		}
		d.log.Info("forgot peer", "peer", addr)
		return nil
	}))
	mux.HandleFunc("POST /v1/ipam/allocate", d.handleAllocate)
	mux.HandleFunc("POST /v1/ipam/release", d.handleRelease)
	mux.HandleFunc("POST /v1/ipam/gc", d.handleGC)
	mux.HandleFunc("GET /v1/ipam/allocations", d.handleAllocations)
	mux.HandleFunc("POST /v1/ipam/rmpeer", d.handleRemovePeer)
	mux.HandleFunc("POST /v1/rotate", d.handleRotate)
	mux.HandleFunc("POST /v1/attach", d.handleAttach)
	mux.HandleFunc("POST /v1/detach", d.handleDetach)
	mux.HandleFunc("GET /v1/attachments", d.handleAttachments)
	mux.HandleFunc("POST /v1/leave", d.handleLeave)
	return mux
}

var errNotFound = errors.New("not found")

func (d *Daemon) handlePeer(do func(addr string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.PeerRequest
		if err := decodeJSON(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		addr, err := mesh.ParsePeerAddress(req.Address, d.cfg.Port)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if err := do(addr); err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, errNotFound) {
				code = http.StatusNotFound
			}
			writeError(w, code, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// Status assembles the status contract from every part of the daemon.
func (d *Daemon) Status(r *http.Request) *api.Status {
	st := &api.Status{Name: d.id.Name, PeerID: d.id.PeerID, Version: d.cfg.Version, Peers: []api.Peer{}, Targets: []api.Target{}}
	for _, m := range d.members.Members() {
		st.Peers = append(st.Peers, api.Peer{Name: m.Name, PeerID: m.Meta.PeerID, Address: m.Addr.String(), State: m.State, Self: m.Self, KeyIDs: m.Meta.Keys})
	}
	for _, t := range d.members.Targets() {
		at := api.Target{Address: t.Address, Source: t.Source, State: t.State, Error: t.Error}
		if !t.NextRetry.IsZero() {
			at.NextRetry = t.NextRetry.UTC().Format(time.RFC3339)
		}
		st.Targets = append(st.Targets, at)
	}
	st.KeyIDs, st.GossipKeyID = d.keys.status()
	d.mu.Lock()
	st.PublicKey = d.meta.PublicKey
	d.mu.Unlock()
	st.IPAM, st.OverlayIP = d.ipamStatus()
	st.Policies = d.policyStatus()
	st.Dataplane = d.dp.Kind()
	st.MTU = d.mtu
	st.Connections = d.connections(r.Context())
	d.mu.Lock()
	if d.cniErr != "" && !d.cniDone {
		st.Problems = append(st.Problems, "CNI plugin not installed: "+d.cniErr)
	}
	if d.natErr != nil {
		st.Problems = append(st.Problems, "NAT: "+d.natErr.Error())
	}
	if d.isoErr != nil {
		st.Problems = append(st.Problems, "port isolation: "+d.isoErr.Error())
	}
	d.mu.Unlock()
	if err := d.rec.Counters().LastError; err != nil {
		st.Problems = append(st.Problems, "data plane: "+err.Error())
	}
	return st
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid request body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, api.Error{Error: err.Error()})
}
