package policy

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const testNode = "node1"

// lbl parses "k=v,k2=v2".
func lbl(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func mkNS(name, labels string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl(labels)}}
}

// mkPod makes a running pod; ip is its PodIPs, comma-separated ("" for
// none), ports are "name:proto:port".
func mkPod(ns, name, node, ip, labels string, ports ...string) *corev1.Pod {
	ips := strings.Split(ip, ",")
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbl(labels)},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ips[0]},
	}
	if ip != "" {
		for _, a := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a})
		}
	}
	for _, s := range ports {
		f := strings.Split(s, ":")
		var n int32
		for _, c := range f[2] {
			n = n*10 + int32(c-'0')
		}
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: f[0], Protocol: corev1.Protocol(f[1]), ContainerPort: n})
	}
	return p
}

func sel(labels string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: lbl(labels)}
}

func podPeer(labels string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: sel(labels)}
}

func nsPeer(labels string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(labels)}
}

func bothPeer(nsLabels, podLabels string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(nsLabels), PodSelector: sel(podLabels)}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto string, p int) networkingv1.NetworkPolicyPort {
	pr := corev1.Protocol(proto)
	v := intstr.FromInt32(int32(p))
	return networkingv1.NetworkPolicyPort{Protocol: &pr, Port: &v}
}

func portRange(proto string, lo, hi int) networkingv1.NetworkPolicyPort {
	pp := port(proto, lo)
	e := int32(hi)
	pp.EndPort = &e
	return pp
}

func portName(proto, name string) networkingv1.NetworkPolicyPort {
	pr := corev1.Protocol(proto)
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &pr, Port: &v}
}

type ingress = networkingv1.NetworkPolicyIngressRule
type egress = networkingv1.NetworkPolicyEgressRule
type peers = []networkingv1.NetworkPolicyPeer
type ports = []networkingv1.NetworkPolicyPort

// mkPolicy makes a policy; types is "Ingress", "Egress", "Ingress,Egress"
// or "" (the API's default).
func mkPolicy(ns, name, podSel, types string, in []ingress, eg []egress) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: *sel(podSel), Ingress: in, Egress: eg},
	}
	if types != "" {
		for _, t := range strings.Split(types, ",") {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyType(t))
		}
	}
	return np
}

// sampleState is a small cluster: two namespaces, pods on this node and
// another, policies of every kind.
func sampleState() State {
	return State{
		Node:       testNode,
		Namespaces: []*corev1.Namespace{mkNS("prod", "env=prod"), mkNS("dev", "env=dev")},
		Pods: []*corev1.Pod{
			mkPod("prod", "web", testNode, "10.32.0.2", "app=web", "http:TCP:8080"),
			mkPod("prod", "db", testNode, "10.32.0.3", "app=db"),
			mkPod("prod", "api", "node2", "10.32.1.2", "app=api", "http:TCP:9090"),
			mkPod("dev", "client", testNode, "10.32.0.4", "app=client"),
		},
		Policies: []*networkingv1.NetworkPolicy{
			mkPolicy("prod", "web-from-api", "app=web", "Ingress",
				[]ingress{{From: peers{podPeer("app=api")}, Ports: ports{portName("TCP", "http"), port("UDP", 53)}}}, nil),
			mkPolicy("prod", "web-from-dev", "app=web", "Ingress",
				[]ingress{{From: peers{bothPeer("env=dev", "app=client"), blockPeer("192.168.0.0/16", "192.168.1.0/24")}, Ports: ports{portRange("TCP", 1000, 2000)}}}, nil),
			mkPolicy("prod", "db-egress", "app=db", "Egress", nil,
				[]egress{{To: peers{nsPeer("env=prod")}, Ports: ports{portName("TCP", "http")}}, {To: peers{blockPeer("0.0.0.0/0", "10.0.0.0/8")}}}),
		},
	}
}

// dualPods: basePods with an IPv6 address each (fd32:: and the IPv4
// address's last octet), but b/other IPv6 only, and a pod of another node
// with an IPv6 address only.
func dualPods() []*corev1.Pod {
	return []*corev1.Pod{
		mkPod("a", "web", testNode, "10.32.0.2,fd32::2", "app=web", "http:TCP:8080", "dns:UDP:5353"),
		mkPod("a", "db", testNode, "10.32.0.3,fd32::3", "app=db", "sql:TCP:5432"),
		mkPod("b", "client", testNode, "10.32.0.4,fd32::4", "app=client"),
		mkPod("b", "other", testNode, "fd32::5", "app=other"),
		mkPod("c", "remote", "node2", "10.32.1.2,fd32::1:2", "app=client", "http:TCP:9090"),
		mkPod("c", "remote6", "node2", "fd32::1:3", "app=client", "http:TCP:9090"),
	}
}
