package control

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/meshnet/mesh/api"
)

// call is the shape of every POST handler: decode the request body into a
// Req (400 when it is not that JSON, unknown fields included), do it, and
// answer with the result (200) or with the error's code and text.
func call[Req, Res any](do func(r *http.Request, req Req) (Res, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if err := decodeJSON(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		res, err := do(r, req)
		if err != nil {
			writeError(w, code(err), err)
			return
		}
		if _, empty := any(res).(noContent); empty {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, res)
	}
}

// noContent is the result of a request answered 204 without a body.
type noContent struct{}

func peerRequest(do func(address string) error) http.HandlerFunc {
	return call(func(_ *http.Request, req api.PeerRequest) (noContent, error) {
		return noContent{}, do(req.Address)
	})
}

func allocate(ipam IPAM) http.HandlerFunc {
	return call(func(r *http.Request, req api.AllocateRequest) (api.Allocation, error) {
		if req.ContainerID == "" || req.IfName == "" {
			return api.Allocation{}, Mark(ErrInvalid, errors.New("containerID and ifName are required"))
		}
		return ipam.Allocate(r.Context(), req)
	})
}

func release(ipam IPAM) http.HandlerFunc {
	return call(func(_ *http.Request, req api.ReleaseRequest) (noContent, error) {
		return noContent{}, ipam.Release(req.ContainerID, req.IfName)
	})
}

func gc(ipam IPAM) http.HandlerFunc {
	return call(func(_ *http.Request, req api.GCRequest) (api.GCResult, error) {
		n, err := ipam.GC(req.Network, req.Valid)
		return api.GCResult{Released: n}, err
	})
}

// removePeer is `mesh rmpeer NAME`: refused (409) while the IPAM says it
// is not safe yet, with the reason and when to retry.
func removePeer(ipam IPAM) http.HandlerFunc {
	return call(func(_ *http.Request, req api.RemovePeerRequest) (api.RemovePeerResult, error) {
		n, err := ipam.RemovePeer(req.Name)
		return api.RemovePeerResult{Ranges: n}, err
	})
}

func rotate(keys Keys) http.HandlerFunc {
	return call(func(_ *http.Request, req api.RotateRequest) (*api.RotateResult, error) {
		return keys.Rotate(req)
	})
}

// leave is `mesh leave`: the node leaves the mesh gracefully, then stops.
func leave(l Lifecycle) http.HandlerFunc {
	return call(func(_ *http.Request, _ api.LeaveRequest) (api.LeaveResult, error) {
		if err := l.Leave(); err != nil {
			return api.LeaveResult{}, err
		}
		return api.LeaveResult{Left: true}, nil
	})
}

// forgetIdentity is `mesh forget-identity NAME`.
func forgetIdentity(ids Identities) http.HandlerFunc {
	return call(func(_ *http.Request, req api.ForgetIdentityRequest) (api.ForgetIdentityResult, error) {
		if req.Name == "" {
			return api.ForgetIdentityResult{}, Mark(ErrInvalid, errors.New("forget-identity: the node name is empty"))
		}
		ok, err := ids.ForgetIdentity(req.Name)
		return api.ForgetIdentityResult{Released: ok}, err
	})
}

// checkNetNS refuses a namespace path that is not absolute: the daemon's
// working directory means nothing to the CLI.
func checkNetNS(req api.AttachRequest) error {
	if !filepath.IsAbs(req.NetNS) {
		return Mark(ErrInvalid, fmt.Errorf("netns %q must be an absolute path", req.NetNS))
	}
	return nil
}

func attachNetNS(at Attachments) http.HandlerFunc {
	return call(func(r *http.Request, req api.AttachRequest) (api.Attachment, error) {
		if err := checkNetNS(req); err != nil {
			return api.Attachment{}, err
		}
		return at.Attach(r.Context(), req.NetNS, req.IfName)
	})
}

func detachNetNS(at Attachments) http.HandlerFunc {
	return call(func(r *http.Request, req api.AttachRequest) (api.DetachResult, error) {
		if err := checkNetNS(req); err != nil {
			return api.DetachResult{}, err
		}
		recs, err := at.Detach(r.Context(), req.NetNS, req.IfName)
		return api.DetachResult{Detached: nonNil(recs)}, err
	})
}
