package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/meshnet/mesh/mesh"
)

// TestReportBadMeta: a member whose metadata does not parse gets no
// WireGuard peer, and that is logged once, not at every reconcile, and
// forgotten when the member goes away.
func TestReportBadMeta(t *testing.T) {
	var buf bytes.Buffer
	d := &Daemon{log: slog.New(slog.NewTextHandler(&buf, nil))}
	bad := mesh.Member{Name: "b", MetaErr: errors.New("unexpected end of JSON input")}
	badKey := mesh.Member{Name: "c", Meta: mesh.Meta{PublicKey: "not-a-key"}}
	good := mesh.Member{Name: "a"}
	self := mesh.Member{Name: "self", Self: true, MetaErr: errors.New("ignored")}

	d.reportBadMeta([]mesh.Member{good, bad, badKey, self})
	d.reportBadMeta([]mesh.Member{good, bad, badKey, self})
	out := buf.String()
	if n := strings.Count(out, "peer=b"); n != 1 {
		t.Errorf("member b with bad metadata logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "does not parse") {
		t.Errorf("log does not say the metadata does not parse:\n%s", out)
	}
	if n := strings.Count(out, "peer=c"); n != 1 {
		t.Errorf("member c with an invalid key logged %d times, want once:\n%s", n, out)
	}
	if strings.Contains(out, "peer=a") || strings.Contains(out, "peer=self") {
		t.Errorf("healthy member or self reported:\n%s", out)
	}
	d.reportBadMeta([]mesh.Member{good})
	if n := d.badMeta.len(); n != 0 {
		t.Errorf("record keeps %d members that are gone", n)
	}
	buf.Reset()
	d.reportBadMeta([]mesh.Member{good, bad})
	if !strings.Contains(buf.String(), "peer=b") {
		t.Errorf("member b back with bad metadata not reported again")
	}
}
