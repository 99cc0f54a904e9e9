package kubetest

import (
	"context"
	"fmt"
	"os"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// TokenTTL is how long ServiceAccount tokens issued here stay valid: longer
// than any test or lab session.
const TokenTTL = 24 * 60 * 60

// ServiceAccountToken creates namespace ns and ServiceAccount name if they
// are missing and returns a fresh token for it from the TokenRequest API,
// as the kubelet would project into a pod.
func (s *APIServer) ServiceAccountToken(ctx context.Context, ns, name string) (string, error) {
	c := s.Client()
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create namespace %s: %w", ns, err)
	}
	_, err = c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create serviceaccount %s/%s: %w", ns, name, err)
	}
	ttl := int64(TokenTTL)
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &ttl}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for serviceaccount %s/%s: %w", ns, name, err)
	}
	return tr.Status.Token, nil
}

// ServiceAccountConfig is a client config on loopback that authenticates as
// ServiceAccount ns/name (created if missing), for checking what RBAC lets
// it do.
func (s *APIServer) ServiceAccountConfig(ctx context.Context, ns, name string) (*rest.Config, error) {
	tok, err := s.ServiceAccountToken(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	cfg := s.AdminConfig()
	cfg.BearerToken = tok
	return cfg, nil
}

// ServiceAccountKubeconfig writes a kubeconfig file at path for
// ServiceAccount ns/name (created if missing) whose server is server, e.g.
// a Forwarder's URL inside a node namespace. It embeds the CA and sets
// tls-server-name, so any address of the apiserver verifies.
func (s *APIServer) ServiceAccountKubeconfig(ctx context.Context, ns, name, server, path string) error {
	tok, err := s.ServiceAccountToken(ctx, ns, name)
	if err != nil {
		return err
	}
	return s.writeKubeconfig(path, server, ns+"-"+name, tok, ns)
}

// AdminKubeconfig writes a kubeconfig file at path for the admin user
// (system:masters) whose server is server, for components the tests run
// with full rights (kube-proxy, or a test's own kubectl-like calls).
func (s *APIServer) AdminKubeconfig(server, path string) error {
	return s.writeKubeconfig(path, server, AdminUser, s.Token, "default")
}

func (s *APIServer) writeKubeconfig(path, server, user, token, ns string) error {
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg := clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{"weft-test": {
			Server: server, CertificateAuthorityData: ca, TLSServerName: ServerName,
		}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{user: {Token: token}},
		Contexts:       map[string]*clientcmdapi.Context{"weft-test": {Cluster: "weft-test", AuthInfo: user, Namespace: ns}},
		CurrentContext: "weft-test",
	}
	if err := clientcmd.WriteToFile(cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
