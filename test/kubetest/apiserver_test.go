package kubetest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/test/etcdtest"
)

// startAPIServer runs etcd and a kube-apiserver for one test.
func startAPIServer(t *testing.T, ctx context.Context) *APIServer {
	t.Helper()
	t0 := time.Now()
	if _, err := Binaries(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube binaries: %v", time.Since(t0))
	e, err := etcdtest.Start(filepath.Join(t.TempDir(), "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	dir := t.TempDir()
	t0 = time.Now()
	s, err := StartAPIServer(ctx, dir, e.ClientURL.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver start to ready: %v", time.Since(t0))
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("--- %s\n%s", s.LogFile, s.LogTail(60))
		}
	})
	return s
}

func TestAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startAPIServer(t, ctx)

	// /readyz through the admin config's TLS and token.
	hc, err := rest.HTTPClientFor(s.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Get(s.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Fatalf("/readyz: %d %q", resp.StatusCode, body)
	}

	// A Node the way the controller manager leaves it: podCIDRs assigned.
	c := s.Client()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
	}
	if _, err := c.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := c.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Spec.PodCIDRs) != 1 || got.Spec.PodCIDRs[0] != "10.244.1.0/24" {
		t.Fatalf("node podCIDRs = %v", got.Spec.PodCIDRs)
	}

	// RBAC is on: a ServiceAccount bound to nothing may not read Nodes.
	saCfg, err := s.ServiceAccountConfig(ctx, "rbac-test", "unbound")
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(saCfg)
	_, err = sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("unbound ServiceAccount listing nodes: err = %v, want Forbidden", err)
	}
	t.Logf("unbound ServiceAccount: %v", err)

	// The kubeconfig for daemons: same identity, loaded the way a daemon
	// loads --kubeconfig-file, through a forwarder at an address the
	// serving certificate does not name (127.0.0.2 stands in for a lab
	// underlay address), verified through tls-server-name.
	fw, err := s.Expose(func(fn func() error) error { return fn() }, netip.MustParseAddrPort("127.0.0.2:0"))
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.ServiceAccountKubeconfig(ctx, "rbac-test", "unbound", fw.URL(), kc); err != nil {
		t.Fatal(err)
	}
	kcfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := kubernetes.NewForConfigOrDie(kcfg).Discovery().ServerVersion()
	if err != nil {
		t.Fatalf("server version with the kubeconfig: %v", err)
	}
	if ver.GitVersion != Version {
		t.Fatalf("server version %s, want %s", ver.GitVersion, Version)
	}
	if _, err := kubernetes.NewForConfigOrDie(kcfg).CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("kubeconfig ServiceAccount getting a node: err = %v, want Forbidden", err)
	}

	// The admin kubeconfig, through the same forwarder, may.
	akc := filepath.Join(t.TempDir(), "admin.kubeconfig")
	if err := s.AdminKubeconfig(fw.URL(), akc); err != nil {
		t.Fatal(err)
	}
	acfg, err := clientcmd.BuildConfigFromFlags("", akc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubernetes.NewForConfigOrDie(acfg).CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{}); err != nil {
		t.Fatalf("admin kubeconfig getting a node: %v", err)
	}
}

// TestAPIServerRestart: Stop and Start keep the port, the data and the
// credentials (the 30 s outage tests rely on it).
func TestAPIServerRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startAPIServer(t, ctx)
	c := s.Client()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "survives", Namespace: "default"}, Data: map[string]string{"k": "v"}}
	if _, err := c.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.Stop()
	t.Logf("kube-apiserver stop: %v", time.Since(t0))
	if _, err := c.CoreV1().ConfigMaps("default").Get(ctx, "survives", metav1.GetOptions{}); err == nil {
		t.Fatal("apiserver still answers after Stop")
	}
	t0 = time.Now()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver restart to ready: %v", time.Since(t0))
	got, err := c.CoreV1().ConfigMaps("default").Get(ctx, "survives", metav1.GetOptions{})
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("after restart: %v %v", got, err)
	}

	// Someone else on the port: Start says so (StartAPIServer then picks
	// another port), and works once the port is free again.
	s.Stop()
	ln, err := net.Listen("tcp", strings.TrimPrefix(s.URL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if err := s.Start(ctx); !errors.Is(err, errPortTaken) {
		t.Fatalf("start on a taken port: %v, want errPortTaken", err)
	}
	t.Logf("start on a taken port failed in %v", time.Since(t0))
	ln.Close()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestApply applies a multi-document YAML with cluster-scoped and
// namespaced objects, twice (server-side apply is idempotent).
func TestApply(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := startAPIServer(t, ctx)
	y := `# leading comment
apiVersion: v1
kind: Namespace
metadata:
  name: apply-test
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: apply-test
data:
  a: "1"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: apply-test
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
---
`
	p := filepath.Join(t.TempDir(), "m.yml")
	if err := os.WriteFile(p, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := s.Apply(ctx, p); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
	c := s.Client()
	cm, err := c.CoreV1().ConfigMaps("apply-test").Get(ctx, "cfg", metav1.GetOptions{})
	if err != nil || cm.Data["a"] != "1" {
		t.Fatalf("configmap: %v %v", cm, err)
	}
	if mf := cm.GetManagedFields(); len(mf) == 0 || mf[0].Manager != FieldManager || mf[0].Operation != metav1.ManagedFieldsOperationApply {
		t.Fatalf("configmap managed fields: %+v", mf)
	}
	if _, err := c.RbacV1().ClusterRoles().Get(ctx, "apply-test", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
}
