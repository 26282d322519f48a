//go:build mesh_omit_kube

package daemon

import (
	"context"
	"errors"
	"log/slog"
)

// KubeSupport says this build runs --kube itself: this one, built with
// mesh_omit_kube, does not (see kube.go).
const KubeSupport = false

// errNoKube is what a daemon of this build answers to Config.Kube.
var errNoKube = errors.New("this build of mesh has no Kubernetes support (built with mesh_omit_kube): run --kube with mesh-kube, which make build leaves beside mesh")

type kubeSource struct{}

func newKubeSource(context.Context, Config, string, *slog.Logger) (*kubeSource, error) {
	return nil, errNoKube
}

func (*kubeSource) initialPeers() int { return 1 }
func (*kubeSource) start(*Daemon)     {}
