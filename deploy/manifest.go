// Package deploy holds what users apply to a cluster (kube-weft.yml) and,
// for tests, typed access to it: end-to-end tests apply this file and run
// weftd with the command, flags and environment its DaemonSet gives, read
// from the manifest itself rather than from a copy that could drift.
package deploy

import (
	"bufio"
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// KubeWeftYAML is deploy/kube-weft.yml.
//
//go:embed kube-weft.yml
var KubeWeftYAML []byte

// KubeWeftPath is the manifest's path in the source tree (for
// kubetest.APIServer.Apply, which reads a file).
func KubeWeftPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "kube-weft.yml")
}

// Objects decodes every document of the manifest into typed objects, in
// order.
func Objects() ([]k8sruntime.Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(KubeWeftYAML)))
	var objs []k8sruntime.Object
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("kube-weft.yml: %w", err)
		}
		if onlyComments(doc) {
			continue
		}
		o, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("kube-weft.yml document %d: %w", i, err)
		}
		objs = append(objs, o)
	}
}

func onlyComments(doc []byte) bool {
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if l = bytes.TrimSpace(l); len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}

// one returns the manifest's only object of type T.
func one[T k8sruntime.Object]() (T, error) {
	var zero T
	objs, err := Objects()
	if err != nil {
		return zero, err
	}
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		return zero, fmt.Errorf("kube-weft.yml: want one %T, found %d", zero, len(found))
	}
	return found[0], nil
}

// DaemonSet is the manifest's DaemonSet (weftd and the CNI installer).
func DaemonSet() (*appsv1.DaemonSet, error) { return one[*appsv1.DaemonSet]() }

// ConfigMap is the manifest's ConfigMap (net-conf.json, cni-conf.json).
func ConfigMap() (*corev1.ConfigMap, error) { return one[*corev1.ConfigMap]() }

// ClusterRole is the manifest's ClusterRole: everything weftd may do.
func ClusterRole() (*rbacv1.ClusterRole, error) { return one[*rbacv1.ClusterRole]() }

// ServiceAccount is the manifest's ServiceAccount, the identity weftd runs as.
func ServiceAccount() (*corev1.ServiceAccount, error) { return one[*corev1.ServiceAccount]() }

// Weftd is the DaemonSet's weftd container: Command, Args and Env are what
// an end-to-end test passes to the real weftd (Env's fieldRefs resolved by
// the test as the kubelet would: metadata.name, metadata.namespace,
// spec.nodeName).
func Weftd() (corev1.Container, error) {
	ds, err := DaemonSet()
	if err != nil {
		return corev1.Container{}, err
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if len(c.Command) > 0 && filepath.Base(c.Command[0]) == "weftd" {
			return c, nil
		}
	}
	return corev1.Container{}, errors.New("kube-weft.yml: no weftd container in the DaemonSet")
}
