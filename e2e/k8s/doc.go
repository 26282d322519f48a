// Package k8se2e is the end-to-end test of mesh on a real two-node
// Kubernetes cluster, built from source and run on simulated hosts
// (internal/testnet): a control-plane host (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) and node hosts, each with its own
// containerd, kubelet and kube-proxy.
//
// The tests are behind the build tag e2ek8s, as they need root, the
// Debian packages containerd, runc and busybox-static, and the Kubernetes
// binaries that build.sh builds (once; they are cached by version outside
// the repository). Run them with `make e2e-k8s`; see docs/kubernetes.md.
package k8se2e
