// Package kubetest adapts a client-go clientset, typically the fake one,
// to kube.Client for tests. Only tests may import it: it links the whole
// clientset, which the daemon avoids (see archtest.TestDaemonLinksOnlyWhatItNeeds).
package kubetest

import (
	"k8s.io/client-go/kubernetes"

	"github.com/meshnet/mesh/kube"
)

// Client returns a kube.Client that uses cs.
func Client(cs kubernetes.Interface) *kube.Client {
	noWatchList, _ := cs.(interface{ IsWatchListSemanticsUnSupported() bool })
	return &kube.Client{
		Nodes:           cs.CoreV1().Nodes(),
		Pods:            cs.CoreV1().Pods(""),
		Namespaces:      cs.CoreV1().Namespaces(),
		NetworkPolicies: cs.NetworkingV1().NetworkPolicies(""),
		NoWatchList:     noWatchList != nil && noWatchList.IsWatchListSemanticsUnSupported(),
	}
}
