// Command mesh-cni is the CNI plugin of mesh: the kubelet (or any CNI
// runtime) starts it once per pod operation with CNI_* environment variables
// and the network configuration on stdin. All logic is in package cni; see
// docs/cni.md.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshnet/mesh/cni"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	p := &cni.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), cni.PluginInfo, "CNI plugin mesh-cni "+version)
}
