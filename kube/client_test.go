package kube

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// TestRESTClient checks the requests of the REST client and that it
// decodes lists, watch events and errors with its small scheme.
func TestRESTClient(t *testing.T) {
	type req struct{ path, query, accept string }
	reqs := make(chan req, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs <- req{r.URL.Path, r.URL.RawQuery, r.Header.Get("Accept")}
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/v1/nodes" && r.URL.Query().Get("watch") == "true":
			enc := json.NewEncoder(w)
			for _, name := range []string{"n2", "n3"} {
				_ = enc.Encode(map[string]any{"type": "ADDED", "object": &corev1.Node{
					TypeMeta: metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "8"}}})
			}
		case r.URL.Path == "/api/v1/nodes":
			_ = json.NewEncoder(w).Encode(&corev1.NodeList{
				TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: "7"},
				Items: []corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24"}}}})
		case r.URL.Path == "/apis/networking.k8s.io/v1/networkpolicies":
			_ = json.NewEncoder(w).Encode(&networkingv1.NetworkPolicyList{
				TypeMeta: metav1.TypeMeta{Kind: "NetworkPolicyList", APIVersion: "networking.k8s.io/v1"},
				Items:    []networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "deny"}}}})
		default:
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status: metav1.StatusFailure, Reason: metav1.StatusReasonForbidden, Code: http.StatusForbidden, Message: "pods is forbidden"})
		}
	}))
	defer srv.Close()
	c, err := newClientForConfig(&rest.Config{Host: srv.URL, UserAgent: "mesh"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	nodes, err := c.Nodes.List(ctx, metav1.ListOptions{LabelSelector: "a=b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 1 || nodes.Items[0].Name != "n1" || nodes.Items[0].Spec.PodCIDR != "10.244.1.0/24" || nodes.ResourceVersion != "7" {
		t.Errorf("nodes = %+v", nodes)
	}
	if r := <-reqs; r.query != "labelSelector=a%3Db" || !strings.HasPrefix(r.accept, "application/vnd.kubernetes.protobuf") {
		t.Errorf("list request = %+v", r)
	}

	timeout := int64(30)
	w, err := c.Nodes.Watch(ctx, metav1.ListOptions{ResourceVersion: "7", TimeoutSeconds: &timeout})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for ev := range w.ResultChan() {
		n, ok := ev.Object.(*corev1.Node)
		if ev.Type != watch.Added || !ok {
			t.Fatalf("event %v %T", ev.Type, ev.Object)
		}
		got = append(got, n.Name)
	}
	if strings.Join(got, ",") != "n2,n3" {
		t.Errorf("watched %v", got)
	}
	if r := <-reqs; !strings.Contains(r.query, "watch=true") || !strings.Contains(r.query, "resourceVersion=7") || !strings.Contains(r.query, "timeoutSeconds=30") {
		t.Errorf("watch request = %+v", r)
	}

	nps, err := c.NetworkPolicies.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nps.Items) != 1 || nps.Items[0].Namespace != "a" || nps.Items[0].Name != "deny" {
		t.Errorf("network policies = %+v", nps)
	}
	<-reqs

	_, err = c.Pods.List(ctx, metav1.ListOptions{})
	if err == nil || !strings.Contains(err.Error(), "pods is forbidden") {
		t.Errorf("pods: err = %v, want forbidden", err)
	}
	if r := <-reqs; r.path != "/api/v1/pods" {
		t.Errorf("pods request = %+v", r)
	}
}
