package control

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/meshnet/mesh/api"
)

// decode reads the request body into v, answering 400 when it is not the
// expected JSON (unknown fields included); false means the answer is sent.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := decodeJSON(r, v); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return false
	}
	return true
}

func handlePeer(do func(address string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.PeerRequest
		if !decode(w, r, &req) {
			return
		}
		if err := do(req.Address); err != nil {
			writeError(w, code(err), err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func handleAllocate(ipam IPAM, w http.ResponseWriter, r *http.Request) {
	var req api.AllocateRequest
	if !decode(w, r, &req) {
		return
	}
	if req.ContainerID == "" || req.IfName == "" {
		writeError(w, http.StatusBadRequest, errors.New("containerID and ifName are required"))
		return
	}
	a, err := ipam.Allocate(r.Context(), req)
	if err != nil {
		writeError(w, code(err), err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func handleRelease(ipam IPAM, w http.ResponseWriter, r *http.Request) {
	var req api.ReleaseRequest
	if !decode(w, r, &req) {
		return
	}
	if err := ipam.Release(req.ContainerID, req.IfName); err != nil {
		writeError(w, code(err), err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func handleGC(ipam IPAM, w http.ResponseWriter, r *http.Request) {
	var req api.GCRequest
	if !decode(w, r, &req) {
		return
	}
	n, err := ipam.GC(req.Network, req.Valid)
	if err != nil {
		writeError(w, code(err), err)
		return
	}
	writeJSON(w, http.StatusOK, api.GCResult{Released: n})
}

// handleRemovePeer is `mesh rmpeer NAME`: refused (409) while the IPAM says
// it is not safe yet, with the reason and when to retry.
func handleRemovePeer(ipam IPAM, w http.ResponseWriter, r *http.Request) {
	var req api.RemovePeerRequest
	if !decode(w, r, &req) {
		return
	}
	n, err := ipam.RemovePeer(req.Name)
	if err != nil {
		writeError(w, code(err), err)
		return
	}
	writeJSON(w, http.StatusOK, api.RemovePeerResult{Ranges: n})
}

func handleRotate(keys Keys, w http.ResponseWriter, r *http.Request) {
	var req api.RotateRequest
	if !decode(w, r, &req) {
		return
	}
	res, err := keys.Rotate(req)
	if err != nil {
		writeError(w, code(err), err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// decodeAttach reads an attach or detach request, whose netns must be an
// absolute path: the daemon's working directory means nothing to the CLI.
func decodeAttach(w http.ResponseWriter, r *http.Request) (api.AttachRequest, bool) {
	var req api.AttachRequest
	if !decode(w, r, &req) {
		return req, false
	}
	if !filepath.IsAbs(req.NetNS) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("netns %q must be an absolute path", req.NetNS))
		return req, false
	}
	return req, true
}

func handleAttach(at Attachments, w http.ResponseWriter, r *http.Request) {
	req, ok := decodeAttach(w, r)
	if !ok {
		return
	}
	a, err := at.Attach(r.Context(), req.NetNS, req.IfName)
	if err != nil {
		writeError(w, code(err), err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func handleDetach(at Attachments, w http.ResponseWriter, r *http.Request) {
	req, ok := decodeAttach(w, r)
	if !ok {
		return
	}
	recs, err := at.Detach(r.Context(), req.NetNS, req.IfName)
	if err != nil {
		writeError(w, code(err), err)
		return
	}
	writeJSON(w, http.StatusOK, api.DetachResult{Detached: nonNil(recs)})
}
