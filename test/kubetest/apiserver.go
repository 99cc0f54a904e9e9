// Package kubetest runs a real kube-apiserver for tests, the lab and
// benchmarks, the way controller-runtime's envtest does: the binary built
// from k8s.io/kubernetes at a pinned release (see Binaries), on a real etcd
// (test/etcdtest), on 127.0.0.1 of the caller's network namespace, with a
// throwaway CA, an admin token and RBAC on. There is no kubelet or
// controller manager: tests create Node objects (with podCIDRs) themselves.
// Daemons in lab namespaces reach the apiserver through a forwarder on an
// underlay address (Expose) with a ServiceAccount kubeconfig
// (ServiceAccountKubeconfig), so the RBAC they run under is real.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/test/tcpfwd"
)

const (
	// ServiceCIDR is the apiserver's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/12"
	// ServiceIP is the "kubernetes" Service's ClusterIP (first of ServiceCIDR).
	ServiceIP = "10.96.0.1"
	// AdminUser is the user the admin token authenticates as (system:masters).
	AdminUser = "weft-admin"
	// Issuer is the service-account token issuer.
	Issuer = "https://kubernetes.default.svc"
	// FieldManager is the server-side apply field manager Apply uses.
	FieldManager = "weft-test"
)

// APIServer is one kube-apiserver process on loopback.
type APIServer struct {
	URL     string // https://127.0.0.1:<port>
	CAFile  string // CA of the serving certificate
	Token   string // admin bearer token (group system:masters)
	Dir     string
	LogFile string // the process's stdout and stderr, appended across restarts

	bin        string
	args       []string
	mu         sync.Mutex
	cmd        *exec.Cmd
	done       chan struct{} // closed when cmd has been reaped
	forwarders []*Forwarder
}

// StartAPIServer starts kube-apiserver with its files in dir (created if
// missing) on etcd at etcdURL, under an etcd prefix of its own, and waits
// until /readyz answers ok or ctx ends. Call Close when done.
func StartAPIServer(ctx context.Context, dir string, etcdURL string) (*APIServer, error) {
	bins, err := Binaries(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("apiserver dir: %w", err)
	}
	p, err := genPKI(dir)
	if err != nil {
		return nil, err
	}
	token, err := randHex(16)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(fmt.Sprintf("%s,%s,%s,\"system:masters\"\n", token, AdminUser, AdminUser)), 0o600); err != nil {
		return nil, fmt.Errorf("apiserver token file: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	prefix, err := randHex(6)
	if err != nil {
		return nil, err
	}
	s := &APIServer{
		URL: "https://127.0.0.1:" + strconv.Itoa(port), CAFile: p.caFile, Token: token, Dir: dir,
		LogFile: filepath.Join(dir, "kube-apiserver.log"), bin: bins.APIServer,
		args: []string{
			"--etcd-servers=" + etcdURL,
			"--etcd-prefix=/weft-test-" + prefix, // a fresh cluster per server on a shared etcd
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--cert-dir=" + dir,
			"--tls-cert-file=" + p.certFile,
			"--tls-private-key-file=" + p.keyFile,
			"--token-auth-file=" + tokens,
			"--authorization-mode=RBAC",
			"--service-account-key-file=" + p.saPubFile,
			"--service-account-signing-key-file=" + p.saKeyFile,
			"--service-account-issuer=" + Issuer,
			"--service-cluster-ip-range=" + ServiceCIDR,
			// The DaemonSet of deploy/kube-weft.yml is privileged.
			"--allow-privileged=true",
			// Without a controller manager no namespace gets its "default"
			// ServiceAccount, which this plugin would demand of every pod.
			"--disable-admission-plugins=ServiceAccount",
			// A loopback advertise address is not a valid endpoint: do not
			// keep trying to publish it in the "kubernetes" Service.
			"--endpoint-reconciler-type=none",
			// Less to bootstrap, quicker to ready; tests have no load to shape.
			"--enable-priority-and-fairness=false",
			"--profiling=false",
		},
	}
	// The free port was only free when we looked: if something took it
	// before the apiserver bound it, try another.
	for attempt := 0; ; attempt++ {
		err := s.Start(ctx)
		if err == nil {
			return s, nil
		}
		if attempt == 2 || !errors.Is(err, errPortTaken) {
			return nil, err
		}
		if port, err = freePort(); err != nil {
			return nil, err
		}
		s.setPort(port)
	}
}

// errPortTaken: the apiserver exited because its port was in use.
var errPortTaken = errors.New("port already in use")

func (s *APIServer) setPort(port int) {
	s.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	for i, a := range s.args {
		if strings.HasPrefix(a, "--secure-port=") {
			s.args[i] = "--secure-port=" + strconv.Itoa(port)
		}
	}
}

func randHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start runs the process (again, after Stop: same port, certificates, token
// and etcd data) and waits until /readyz is ok or ctx ends.
func (s *APIServer) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return nil
	}
	f, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.mu.Unlock()
		return fmt.Errorf("apiserver log: %w", err)
	}
	defer f.Close()                      // the child has its own copy
	startOff, _ := f.Seek(0, io.SeekEnd) // this run's output starts here
	fmt.Fprintf(f, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), s.bin)
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// If the test binary dies (timeout panic, crash) take the server along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	if err := s.waitReady(ctx, done); err != nil {
		s.Stop()
		tail := s.LogTail(40)
		if b, rerr := os.ReadFile(s.LogFile); rerr == nil && int64(len(b)) > startOff &&
			bytes.Contains(b[startOff:], []byte("address already in use")) {
			err = fmt.Errorf("%w: %w", err, errPortTaken)
		}
		return fmt.Errorf("kube-apiserver not ready: %w\n--- %s (last lines)\n%s", err, s.LogFile, tail)
	}
	return nil
}

// waitReady polls /readyz until it answers 200, the process exits, or ctx
// ends (at most 2 minutes, so a caller without a deadline does not hang).
func (s *APIServer) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	hc, err := rest.HTTPClientFor(s.AdminConfig())
	if err != nil {
		return err
	}
	hc.Timeout = 2 * time.Second
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			body := make([]byte, 512)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("/readyz %d: %s", resp.StatusCode, bytes.TrimSpace(body[:n]))
		} else {
			last = err.Error()
		}
		select {
		case <-exited:
			return errors.New("process exited")
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %s)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop ends the process (SIGTERM, SIGKILL after 10 s) and waits for it. Its
// data stays in etcd and its files in Dir; Start brings it back. Forwarders
// keep listening, but every connection through them fails while stopped.
func (s *APIServer) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Close stops the server and closes every forwarder.
func (s *APIServer) Close() {
	for _, f := range s.forwarders {
		f.Close()
	}
	s.Stop()
}

// LogTail returns up to n last lines of the log, for failure messages.
func (s *APIServer) LogTail(n int) string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// AdminConfig is a client config for the admin user on loopback.
func (s *APIServer) AdminConfig() *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile},
		QPS:             -1, // no client-side throttling in tests
	}
}

// Client is an admin clientset on loopback.
func (s *APIServer) Client() kubernetes.Interface {
	return kubernetes.NewForConfigOrDie(s.AdminConfig())
}

// Forwarder exposes the apiserver inside a lab namespace (see package
// tcpfwd for Partition, Heal and Close).
type Forwarder struct{ *tcpfwd.Forwarder }

// URL is the server URL daemons in the namespace use.
func (f *Forwarder) URL() string { return "https://" + f.Addr.String() }

// Expose starts a forwarder on addr inside the namespace that listen creates
// sockets in (e.g. topo.Do with the underlay's path). Clients through it
// verify the certificate as ServerName (ServiceAccountKubeconfig sets it).
func (s *APIServer) Expose(listen func(fn func() error) error, addr netip.AddrPort) (*Forwarder, error) {
	f, err := tcpfwd.Listen(listen, addr, strings.TrimPrefix(s.URL, "https://"))
	if err != nil {
		return nil, fmt.Errorf("expose kube-apiserver: %w", err)
	}
	fw := &Forwarder{f}
	s.forwarders = append(s.forwarders, fw)
	return fw, nil
}
