package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/attach"
	"github.com/meshnet/mesh/control"
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
		Gateway: r.Gateway, Address6: r.Address6, Gateway6: r.Gateway6, Created: r.Created.UTC().Format(time.RFC3339)}
}

// attachAPI is control.Attachments: `mesh attach` and `mesh detach`.
type attachAPI struct{ d *Daemon }

func (p attachAPI) Attach(ctx context.Context, netns, ifName string) (api.Attachment, error) {
	if ifName == "" {
		ifName = attach.DefaultIfName
	}
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	rec, err := p.d.attach.Attach(ctx, netns, ifName)
	switch {
	case errors.Is(err, attach.ErrInvalid):
		return api.Attachment{}, control.Mark(control.ErrInvalid, err)
	case errors.Is(err, attach.ErrNotInstalled):
		return api.Attachment{}, control.Mark(control.ErrUnavailable, fmt.Errorf("cannot attach %q yet: %w", netns, err))
	case err != nil:
		return api.Attachment{}, fmt.Errorf("failed to attach %q: %w", netns, err)
	}
	return toAPIAttachment(rec), nil
}

func (p attachAPI) Detach(ctx context.Context, netns, ifName string) ([]api.Attachment, error) {
	ctx, cancel := context.WithTimeout(ctx, attachTimeout)
	defer cancel()
	recs, err := p.d.attach.Detach(ctx, netns, ifName)
	if err != nil {
		return nil, fmt.Errorf("failed to detach %q: %w", netns, err)
	}
	out := []api.Attachment{}
	for _, rec := range recs {
		out = append(out, toAPIAttachment(rec))
	}
	return out, nil
}

func (p attachAPI) List() []api.Attachment {
	out := []api.Attachment{}
	for _, rec := range p.d.attach.List() {
		out = append(out, toAPIAttachment(rec))
	}
	return out
}
