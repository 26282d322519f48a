package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/attach"
)

// attachCheckInterval is how often the daemon looks for attachments whose
// network namespace is gone; an exited container keeps its address at
// most this long (plus the release itself).
const attachCheckInterval = 5 * time.Second

// attachTimeout bounds one attach or detach: the plugin's own calls to the
// daemon are bounded by cni.DefaultTimeout.
const attachTimeout = 60 * time.Second

func (d *Daemon) startAttach() error {
	plugin := attach.CNI{
		Conflist: filepath.Join(d.cfg.CNIConfDir, CNIConfName),
		BinDirs:  []string{d.cfg.CNIBinDir},
		CacheDir: d.cfg.path("cni-cache"),
	}
	m, err := attach.NewManager(d.cfg.path("attachments.json"), plugin, d.log.With("component", "attach"))
	if err != nil {
		return err
	}
	d.attach = m
	return nil
}

// attachLoop releases attachments whose namespace is gone, from the start
// (a container may have exited while the daemon was down) and then
// periodically.
func (d *Daemon) attachLoop(ctx context.Context) {
	t := time.NewTicker(attachCheckInterval)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, attachTimeout)
		d.attach.Check(cctx)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func toAPIAttachment(r attach.Record) api.Attachment {
	return api.Attachment{ContainerID: r.ContainerID, IfName: r.IfName, NetNS: r.NetNS, Address: r.Address,
		Gateway: r.Gateway, Created: r.Created.UTC().Format(time.RFC3339)}
}

func (d *Daemon) decodeAttach(w http.ResponseWriter, r *http.Request) (api.AttachRequest, bool) {
	var req api.AttachRequest
	if err := decodeJSON(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return req, false
	}
	if !filepath.IsAbs(req.NetNS) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("netns %q must be an absolute path", req.NetNS))
		return req, false
	}
	return req, true
}

func (d *Daemon) handleAttach(w http.ResponseWriter, r *http.Request) {
	req, ok := d.decodeAttach(w, r)
	if !ok {
		return
	}
	if req.IfName == "" {
		req.IfName = attach.DefaultIfName
	}
	ctx, cancel := context.WithTimeout(r.Context(), attachTimeout)
	defer cancel()
	rec, err := d.attach.Attach(ctx, req.NetNS, req.IfName)
	switch {
	case errors.Is(err, attach.ErrInvalid):
		writeError(w, http.StatusBadRequest, err)
	case errors.Is(err, attach.ErrNotInstalled):
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("cannot attach %q yet: %w", req.NetNS, err))
	case err != nil:
		writeError(w, http.StatusInternalServerError, fmt.Errorf("failed to attach %q: %w", req.NetNS, err))
	default:
		writeJSON(w, http.StatusOK, toAPIAttachment(rec))
	}
}

func (d *Daemon) handleDetach(w http.ResponseWriter, r *http.Request) {
	req, ok := d.decodeAttach(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), attachTimeout)
	defer cancel()
	recs, err := d.attach.Detach(ctx, req.NetNS, req.IfName)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("failed to detach %q: %w", req.NetNS, err))
		return
	}
	out := api.DetachResult{Detached: []api.Attachment{}}
	for _, rec := range recs {
		out.Detached = append(out.Detached, toAPIAttachment(rec))
	}
	writeJSON(w, http.StatusOK, out)
}

func (d *Daemon) handleAttachments(w http.ResponseWriter, r *http.Request) {
	out := []api.Attachment{}
	for _, rec := range d.attach.List() {
		out = append(out, toAPIAttachment(rec))
	}
	writeJSON(w, http.StatusOK, out)
}
