package deploy

// The manifest as written, and on a real kube-apiserver (test/kubetest).

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/test/etcdtest"
	"github.com/weftnet/weft/test/kubetest"
)

// The permissions flanneld's kube mode uses, and weftd's: nothing more.
var wantRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
}

// get calls one of the package's accessors or fails the test.
func get[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	v, err := f()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestManifestContent checks the manifest as written (no apiserver needed).
func TestManifestContent(t *testing.T) {
	if got := get(t, ClusterRole).Rules; !reflect.DeepEqual(got, wantRules) {
		t.Errorf("ClusterRole rules = %+v, want %+v", got, wantRules)
	}
	crb := get(t, one[*rbacv1.ClusterRoleBinding])
	if crb.RoleRef.Name != "weft" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "weft" || crb.Subjects[0].Namespace != "kube-weft" {
		t.Errorf("ClusterRoleBinding = %+v", crb)
	}
	if sa := get(t, ServiceAccount); sa.Name != "weft" || sa.Namespace != "kube-weft" {
		t.Errorf("ServiceAccount %s/%s", sa.Namespace, sa.Name)
	}
	checkConfigMap(t, get(t, ConfigMap))
	checkDaemonSet(t, get(t, DaemonSet))
	if ns := get(t, one[*corev1.Namespace]); ns.Name != "kube-weft" {
		t.Errorf("Namespace %s", ns.Name)
	}
	if w := get(t, Weftd); w.Name != "kube-weft" {
		t.Errorf("Weftd() = container %s", w.Name)
	}
	// The embedded manifest is the file on disk.
	b, err := os.ReadFile(KubeWeftPath())
	if err != nil || !bytes.Equal(b, KubeWeftYAML) {
		t.Errorf("KubeWeftPath() %s does not hold KubeWeftYAML: %v", KubeWeftPath(), err)
	}
}

func checkConfigMap(t *testing.T, cm *corev1.ConfigMap) {
	t.Helper()
	if cm.Name != "kube-weft-cfg" || cm.Namespace != "kube-weft" {
		t.Errorf("ConfigMap %s/%s", cm.Namespace, cm.Name)
	}
	var nc struct {
		Network string
		Backend struct{ Type string }
	}
	if err := json.Unmarshal([]byte(cm.Data["net-conf.json"]), &nc); err != nil || nc.Network != "10.244.0.0/16" || nc.Backend.Type != "vxlan" {
		t.Errorf("net-conf.json = %+v, %v", nc, err)
	}
	// The conflist is the one weft-cni ships, not a drifting copy.
	want, err := os.ReadFile("../cmd/weft-cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if !jsonEqual(t, []byte(cm.Data["cni-conf.json"]), want) {
		t.Errorf("cni-conf.json = %s, want cmd/weft-cni/10-weft.conflist %s", cm.Data["cni-conf.json"], want)
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return reflect.DeepEqual(x, y)
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	t.Helper()
	if ds.Name != "kube-weft-ds" || ds.Namespace != "kube-weft" {
		t.Errorf("DaemonSet %s/%s", ds.Namespace, ds.Name)
	}
	ps := ds.Spec.Template.Spec
	if !ps.HostNetwork || ps.PriorityClassName != "system-node-critical" || ps.ServiceAccountName != "weft" {
		t.Errorf("pod spec: hostNetwork %v, priorityClassName %q, serviceAccountName %q", ps.HostNetwork, ps.PriorityClassName, ps.ServiceAccountName)
	}
	wantTol := []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	if !reflect.DeepEqual(ps.Tolerations, wantTol) {
		t.Errorf("tolerations = %+v", ps.Tolerations)
	}
	if len(ps.Containers) != 1 || len(ps.InitContainers) != 1 {
		t.Fatalf("%d containers, %d init containers", len(ps.Containers), len(ps.InitContainers))
	}
	c := ps.Containers[0]
	if !reflect.DeepEqual(c.Command, []string{"/usr/local/bin/weftd"}) || !reflect.DeepEqual(c.Args, []string{"--ip-masq", "--kube-subnet-mgr"}) {
		t.Errorf("weftd command %q args %q", c.Command, c.Args)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Errorf("weftd not privileged")
	}
	wantEnv := map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName"}
	if len(c.Env) != len(wantEnv) {
		t.Errorf("env = %+v", c.Env)
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != wantEnv[e.Name] {
			t.Errorf("env %s = %+v, want fieldRef %s", e.Name, e.ValueFrom, wantEnv[e.Name])
		}
	}
	// Probes on weftd's default --metrics-addr: readiness on /healthz,
	// liveness on /livez (a liveness probe on /healthz would restart weftd
	// through every etcd outage).
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/livez"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe %+v, want an httpGet", p.name, p.probe)
			continue
		}
		g := p.probe.HTTPGet
		if g.Host != "127.0.0.1" || g.Port.IntValue() != 9473 || g.Path != p.path {
			t.Errorf("%s probe gets %s:%s%s, want 127.0.0.1:9473%s (weftd's default --metrics-addr)", p.name, g.Host, g.Port.String(), g.Path, p.path)
		}
	}
	ic := ps.InitContainers[0]
	if !reflect.DeepEqual(ic.Command, []string{"/usr/local/bin/weft-install-cni"}) {
		t.Errorf("init container command %q", ic.Command)
	}
	for _, x := range []corev1.Container{c, ic} {
		if x.Image != ds.Spec.Template.Spec.Containers[0].Image || x.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("%s: image %q pull %q", x.Name, x.Image, x.ImagePullPolicy)
		}
	}

	// Host paths and where each container sees them.
	hostPaths := map[string]string{}
	for _, v := range ps.Volumes {
		switch {
		case v.HostPath != nil:
			hostPaths[v.Name] = v.HostPath.Path
		case v.ConfigMap != nil:
			hostPaths[v.Name] = "configmap:" + v.ConfigMap.Name
		}
	}
	mounts := func(x corev1.Container) map[string]string {
		m := map[string]string{}
		for _, vm := range x.VolumeMounts {
			m[hostPaths[vm.Name]] = filepath.Clean(vm.MountPath)
			if vm.Name == "bpffs" && (vm.MountPropagation == nil || *vm.MountPropagation != corev1.MountPropagationBidirectional) {
				t.Errorf("%s: /sys/fs/bpf mount propagation %v, want Bidirectional", x.Name, vm.MountPropagation)
			}
		}
		return m
	}
	wantMain := map[string]string{
		"/sys/fs/bpf": "/sys/fs/bpf", "/run/flannel": "/run/flannel", "configmap:kube-weft-cfg": "/etc/kube-flannel",
		"/run/xtables.lock": "/run/xtables.lock",
	}
	if got := mounts(c); !reflect.DeepEqual(got, wantMain) {
		t.Errorf("weftd mounts = %v, want %v", got, wantMain)
	}
	wantInit := map[string]string{"/opt/cni/bin": "/opt/cni/bin", "/etc/cni/net.d": "/etc/cni/net.d", "configmap:kube-weft-cfg": "/etc/kube-flannel"}
	if got := mounts(ic); !reflect.DeepEqual(got, wantInit) {
		t.Errorf("install-cni mounts = %v, want %v", got, wantInit)
	}
}

// TestManifestApply: the manifest applies cleanly to a real apiserver by
// server-side apply (twice: idempotent), reads back as written, and its
// ServiceAccount can do exactly what the ClusterRole grants.
func TestManifestApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e, err := etcdtest.Start(filepath.Join(t.TempDir(), "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s, err := kubetest.StartAPIServer(ctx, t.TempDir(), e.ClientURL.String())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < 2; i++ {
		if err := s.Apply(ctx, KubeWeftPath()); err != nil {
			t.Fatalf("apply %d: %v\n%s", i, err, s.LogTail(20))
		}
	}

	admin := s.Client()
	cr, err := admin.RbacV1().ClusterRoles().Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cr.Rules, wantRules) {
		t.Errorf("ClusterRole rules read back = %+v", cr.Rules)
	}
	cm, err := admin.CoreV1().ConfigMaps("kube-weft").Get(ctx, "kube-weft-cfg", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkConfigMap(t, cm)
	ds, err := admin.AppsV1().DaemonSets("kube-weft").Get(ctx, "kube-weft-ds", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkDaemonSet(t, ds)

	checkServiceAccountRBAC(t, ctx, s)
}

func checkServiceAccountRBAC(t *testing.T, ctx context.Context, s *kubetest.APIServer) {
	admin := s.Client()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}}}
	if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := s.ServiceAccountConfig(ctx, "kube-weft", "weft")
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(cfg)

	// What RBAC says, per verb and resource.
	for _, c := range []struct {
		verb, resource, sub, ns string
		allowed                 bool
	}{
		{"get", "nodes", "", "", true},
		{"list", "nodes", "", "", true},
		{"watch", "nodes", "", "", true},
		{"patch", "nodes", "status", "", true},
		{"get", "pods", "", "kube-weft", true},
		{"update", "nodes", "", "", false},
		{"patch", "nodes", "", "", false},
		{"create", "nodes", "", "", false},
		{"delete", "nodes", "", "", false},
		{"update", "nodes", "status", "", false},
		{"list", "pods", "", "kube-weft", false},
		{"list", "secrets", "", "kube-weft", false},
		{"get", "configmaps", "", "kube-weft", false},
	} {
		r, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Resource: c.resource, Subresource: c.sub, Namespace: c.ns,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.allowed {
			t.Errorf("%s %s/%s: allowed %v, want %v (%s)", c.verb, c.resource, c.sub, r.Status.Allowed, c.allowed, r.Status.Reason)
		}
	}

	// And by real calls, the ones weftd makes.
	if _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list nodes: %v", err)
	}
	w, err := sa.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("watch nodes: %v", err)
	} else {
		w.Stop()
	}
	patch := []byte(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true"}}}`)
	if _, err := sa.CoreV1().Nodes().Patch(ctx, "node-a", types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("patch nodes/status: %v", err)
	}
	if _, err := sa.CoreV1().Pods("kube-weft").Get(ctx, "no-such-pod", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get pod: %v, want NotFound (allowed, absent)", err)
	}
	if _, err := sa.CoreV1().Nodes().Patch(ctx, "node-a", types.StrategicMergePatchType, patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("patch nodes (not status): %v, want Forbidden", err)
	}
	n, _ := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if _, err := sa.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("update node: %v, want Forbidden", err)
	}
	if _, err := sa.CoreV1().Secrets("kube-weft").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets: %v, want Forbidden", err)
	}
}
