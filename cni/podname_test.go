package cni

import "testing"

func TestPodNameFromCNIArgs(t *testing.T) {
	for _, tc := range []struct {
		name, args, ns, pod string
	}{
		{"kubelet", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u", "default", "web-0"},
		{"none", "", "", ""},
		{"other-runtime", "IgnoreUnknown=1;FOO=bar", "", ""},
		{"value-with-equals", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b=c", "a", "b=c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, pod := podName(tc.args)
			if ns != tc.ns || pod != tc.pod {
				t.Errorf("podName(%q) = %q, %q; want %q, %q", tc.args, ns, pod, tc.ns, tc.pod)
			}
		})
	}
}
