package kube

import (
	"context"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// This package deliberately does not use k8s.io/client-go/kubernetes or
// k8s.io/client-go/informers: they link (and register at init) every API
// group, which cost the daemon ~10 MB of binary and of resident memory.
// The daemon needs only four resources, served by small REST clients over
// a scheme that knows core/v1 and networking/v1.

// Resource lists and watches one kind of object in all namespaces. The
// typed clients of client-go satisfy it, which lets tests use the fake
// clientset: clientset.CoreV1().Nodes(), clientset.CoreV1().Pods("").
type Resource[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Client is the part of the Kubernetes API the daemon uses.
type Client struct {
	Nodes           Resource[*corev1.NodeList]
	Pods            Resource[*corev1.PodList]
	Namespaces      Resource[*corev1.NamespaceList]
	NetworkPolicies Resource[*networkingv1.NetworkPolicyList]

	// NoWatchList makes informers list and then watch rather than stream
	// the initial list in a watch. The fake clientset needs it: it
	// ignores sendInitialEvents and would never report the list complete.
	NoWatchList bool
}

// IsWatchListSemanticsUnSupported is what the reflector of client-go asks
// (see k8s.io/client-go/util/watchlist).
func (c *Client) IsWatchListSemanticsUnSupported() bool { return c.NoWatchList }

// scheme knows only the types the daemon reads; parameterCodec encodes
// ListOptions into query parameters.
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	utilruntime.Must(corev1.AddToScheme(scheme))
	utilruntime.Must(networkingv1.AddToScheme(scheme))
}

// NewClient returns a client from kubeconfig, or from the in-cluster
// service account when kubeconfig is empty.
func NewClient(kubeconfig string) (*Client, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("failed to load the in-cluster Kubernetes config (give --kubeconfig outside a pod): %w", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("failed to load kubeconfig %q: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = "mesh"
	c, err := newClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("failed to create a Kubernetes client: %w", err)
	}
	return c, nil
}

func newClientForConfig(cfg *rest.Config) (*Client, error) {
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	core, err := restClient(cfg, httpClient, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	networking, err := restClient(cfg, httpClient, "/apis", networkingv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &Client{
		Nodes:           &restResource[*corev1.NodeList]{core, "nodes", func() *corev1.NodeList { return &corev1.NodeList{} }},
		Pods:            &restResource[*corev1.PodList]{core, "pods", func() *corev1.PodList { return &corev1.PodList{} }},
		Namespaces:      &restResource[*corev1.NamespaceList]{core, "namespaces", func() *corev1.NamespaceList { return &corev1.NamespaceList{} }},
		NetworkPolicies: &restResource[*networkingv1.NetworkPolicyList]{networking, "networkpolicies", func() *networkingv1.NetworkPolicyList { return &networkingv1.NetworkPolicyList{} }},
	}, nil
}

// restClient is what a generated clientset makes for one API group version.
func restClient(cfg *rest.Config, httpClient *http.Client, apiPath string, gv schema.GroupVersion) (rest.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = apiPath
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientForConfigAndClient(c, httpClient)
}

// restResource does what the List and Watch of a typed client do, for a
// resource in all namespaces (or a cluster-scoped one).
type restResource[L runtime.Object] struct {
	client   rest.Interface
	resource string
	newList  func() L
}

func (r *restResource[L]) List(ctx context.Context, opts metav1.ListOptions) (L, error) {
	list := r.newList()
	err := r.client.Get().
		UseProtobufAsDefault().
		Resource(r.resource).
		VersionedParams(&opts, parameterCodec).
		Timeout(timeout(opts)).
		Do(ctx).
		Into(list)
	return list, err
}

func (r *restResource[L]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.client.Get().
		UseProtobufAsDefault().
		Resource(r.resource).
		VersionedParams(&opts, parameterCodec).
		Timeout(timeout(opts)).
		Watch(ctx)
}

func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}

// NewInformer returns an informer for the objects of r, which are like
// example (&corev1.Node{} for c.Nodes). The caller runs it.
func NewInformer[L runtime.Object](c *Client, r Resource[L], example runtime.Object, resync time.Duration) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return r.List(ctx, opts)
		},
		WatchFuncWithContext: r.Watch,
	}
	return cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, c), example, resync, cache.Indexers{})
}
