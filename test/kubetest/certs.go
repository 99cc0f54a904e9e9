package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// servingNames are the names and addresses the serving certificate holds.
// Clients that reach the apiserver through a forwarder at some lab address
// verify it as ServerName (kubeconfigs written here set tls-server-name),
// so the certificate never needs the lab's addresses.
var servingNames = []string{"localhost", ServerName, "kubernetes", "kubernetes.default", "kubernetes.default.svc.cluster.local"}

// ServerName is the TLS name clients outside loopback verify.
const ServerName = "kubernetes.default.svc"

// pki is what StartAPIServer generates into its directory.
type pki struct {
	caFile, certFile, keyFile string // serving CA, certificate, key
	saKeyFile, saPubFile      string // service-account token signing pair
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

func writeKey(path string, k *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

// genPKI writes a throwaway CA, a serving certificate for loopback and the
// in-cluster names, and a service-account signing key pair into dir.
func genPKI(dir string) (pki, error) {
	p := pki{
		caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "apiserver.crt"),
		keyFile: filepath.Join(dir, "apiserver.key"), saKeyFile: filepath.Join(dir, "sa.key"),
		saPubFile: filepath.Join(dir, "sa.pub"),
	}
	fail := func(err error) (pki, error) { return pki{}, fmt.Errorf("generate apiserver certificates: %w", err) }
	caKey, err := newKey()
	if err != nil {
		return fail(err)
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	srvKey, err := newKey()
	if err != nil {
		return fail(err)
	}
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    servingNames,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.ParseIP(ServiceIP)},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	saKey, err := newKey()
	if err != nil {
		return fail(err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fail(err)
	}
	for _, err := range []error{
		writePEM(p.caFile, "CERTIFICATE", caDER, 0o644),
		writePEM(p.certFile, "CERTIFICATE", srvDER, 0o644),
		writeKey(p.keyFile, srvKey),
		writeKey(p.saKeyFile, saKey),
		writePEM(p.saPubFile, "PUBLIC KEY", saPub, 0o644),
	} {
		if err != nil {
			return fail(err)
		}
	}
	return p, nil
}
