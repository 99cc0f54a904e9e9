package kube

// The apiserver client. weftd calls five things: Nodes get, list, watch
// and patch of nodes/status, Pods get, SelfSubjectAccessReviews create, and
// /version. client-go's clientset (kubernetes.NewForConfig) would do them,
// but linking it links every API group it knows and its scheme registers
// all of them at init: the binary grew from 25 to 79 MB, about 40 MB of it
// resident whatever the cluster size, which alone missed issue 11's 40 MB
// RSS target at 10,000 nodes (53 MB measured; 39 MB with this file). So
// this file makes the same typed calls over two rest.RESTClients (core/v1
// and authorization.k8s.io/v1) and a scheme holding only those two groups.
// The requests are those of the generated clients (same paths, verbs,
// query parameters, protobuf preferred, one shared HTTP client, each group
// with client-go's default rate limiter), written out on rest.Request
// rather than through client-go's gentype, whose package links its fake
// clients and with them strategic-merge-patch and the OpenAPI models (4.4 MB
// more binary). A new call is one method here; a new group needs its
// AddToScheme in newScheme and a RESTClient in newAPIClient.

import (
	"context"
	"fmt"
	"time"

	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// apiClient is the typed subset of the Kubernetes API weftd uses.
type apiClient struct {
	core   rest.Interface // /api/v1: nodes, pods, and /version
	authz  rest.Interface // /apis/authorization.k8s.io/v1
	params runtime.ParameterCodec
}

// newScheme holds metav1's option types (GetOptions, ListOptions, ... as
// query parameters; WatchEvent), core/v1 and authorization/v1, the only
// groups weftd reads or writes.
func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authv1.AddToScheme} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// newAPIClient builds the client from rc (not modified).
func newAPIClient(rc *rest.Config) (*apiClient, error) {
	s, err := newScheme()
	if err != nil {
		return nil, fmt.Errorf("kube client: scheme: %w", err)
	}
	codecs := serializer.NewCodecFactory(s)
	httpClient, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("kube client: %w", err)
	}
	group := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		c := rest.CopyConfig(rc)
		c.GroupVersion, c.APIPath = &gv, apiPath
		c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(s, codecs).WithoutConversion()
		if c.UserAgent == "" {
			c.UserAgent = rest.DefaultKubernetesUserAgent()
		}
		rcl, err := rest.RESTClientForConfigAndClient(c, httpClient)
		if err != nil {
			return nil, fmt.Errorf("kube client: %s: %w", gv, err)
		}
		return rcl, nil
	}
	core, err := group(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, err
	}
	authz, err := group(authv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, err
	}
	return &apiClient{core: core, authz: authz, params: runtime.NewParameterCodec(s)}, nil
}

// timeout is a list's or watch's TimeoutSeconds as the request's timeout,
// as the generated clients set it (the reflector bounds its watches so).
func timeout(o metav1.ListOptions) time.Duration {
	if o.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*o.TimeoutSeconds) * time.Second
}

func (c *apiClient) getNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.core.Get().UseProtobufAsDefault().Resource("nodes").Name(name).
		VersionedParams(&metav1.GetOptions{}, c.params).Do(ctx).Into(n)
	return n, err
}

func (c *apiClient) listNodes(ctx context.Context, o metav1.ListOptions) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	err := c.core.Get().UseProtobufAsDefault().Resource("nodes").
		VersionedParams(&o, c.params).Timeout(timeout(o)).Do(ctx).Into(l)
	return l, err
}

func (c *apiClient) watchNodes(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	o.Watch = true
	return c.core.Get().UseProtobufAsDefault().Resource("nodes").
		VersionedParams(&o, c.params).Timeout(timeout(o)).Watch(ctx)
}

// patchNodeStatus patches nodes/<name>/status with a patch of type pt.
func (c *apiClient) patchNodeStatus(ctx context.Context, name string, pt types.PatchType, patch []byte, o metav1.PatchOptions) error {
	return c.core.Patch(pt).UseProtobufAsDefault().Resource("nodes").Name(name).SubResource("status").
		VersionedParams(&o, c.params).Body(patch).Do(ctx).Into(&corev1.Node{})
}

func (c *apiClient) getPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p := &corev1.Pod{}
	err := c.core.Get().UseProtobufAsDefault().Namespace(namespace).Resource("pods").Name(name).
		VersionedParams(&metav1.GetOptions{}, c.params).Do(ctx).Into(p)
	return p, err
}

func (c *apiClient) createSelfSubjectAccessReview(ctx context.Context, r *authv1.SelfSubjectAccessReview) (*authv1.SelfSubjectAccessReview, error) {
	out := &authv1.SelfSubjectAccessReview{}
	err := c.authz.Post().UseProtobufAsDefault().Resource("selfsubjectaccessreviews").
		VersionedParams(&metav1.CreateOptions{}, c.params).Body(r).Do(ctx).Into(out)
	return out, err
}

// version asks the apiserver for /version: does it answer at all.
func (c *apiClient) version(ctx context.Context) error {
	_, err := c.core.Get().AbsPath("/version").Do(ctx).Raw()
	return err
}
