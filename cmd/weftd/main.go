// Command weftd is Weft's node daemon: one per node, privileged. It takes
// the node's pod subnet from etcd (flannel's schema) or, with
// --kube-subnet-mgr, from its Kubernetes Node object (flanneld's kube
// subnet manager), so flannel nodes and Weft nodes share a cluster; it sets
// up the node's BPF data plane and keeps the tunnels map in step with the
// other nodes' leases.
//
// The data plane is pinned: it keeps forwarding while weftd is stopped,
// restarted or upgraded. On SIGTERM weftd leaves it running unless
// --cleanup-on-exit is given.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/weftnet/weft/cmd/internal/cliargs"
	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/kube"
	"github.com/weftnet/weft/control/store"
	"github.com/weftnet/weft/loader"
)

// config is weftd's parsed and validated command line.
type config struct {
	EtcdEndpoints []string
	EtcdPrefix    string
	EtcdCAFile    string
	EtcdCertFile  string
	EtcdKeyFile   string
	EtcdUsername  string
	EtcdPassword  string

	// Kubernetes mode (flanneld's --kube-subnet-mgr): see control/kube.
	KubeSubnetMgr bool
	Kube          kube.Options

	Iface      string
	PublicIP   netip.Addr
	PublicIPv6 netip.Addr // --public-ipv6
	SubnetFile string
	LeaseTTL   time.Duration
	VtepMAC    net.HardwareAddr

	PinPath       string
	Decap         loader.DecapMode
	GRODevice     bool
	MetricsAddr   string
	LogLevel      zapcore.Level
	CleanupOnExit bool
	IPMasq        bool
}

// parseFlags turns args and the environment (getenv) into a config. Every
// check happens here, before weftd touches the node, so a bad flag changes
// nothing.
//
// Like flanneld, every flag can also come from FLANNELD_<FLAG> (upper case,
// "-" as "_": FLANNELD_IFACE, FLANNELD_KUBE_SUBNET_MGR), which is how
// flannel's manifests pass some of them; a flag on the command line wins.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := pflag.NewFlagSet("weftd", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c         config
		endpoints string
		publicIP  string
		publicIP6 string
		vtepMAC   string
		decap     string
		logLevel  string
	)
	fs.StringVar(&endpoints, "etcd-endpoints", "http://127.0.0.1:2379", "comma-separated etcd endpoints (flanneld's flag)")
	fs.StringVar(&c.EtcdPrefix, "etcd-prefix", flannel.DefaultPrefix, "etcd prefix of the network config and subnet leases (flanneld's flag)")
	fs.StringVar(&c.EtcdCAFile, "etcd-cafile", "", "CA bundle to verify etcd servers (flanneld's flag)")
	fs.StringVar(&c.EtcdCertFile, "etcd-certfile", "", "client certificate for etcd (flanneld's flag)")
	fs.StringVar(&c.EtcdKeyFile, "etcd-keyfile", "", "client key for etcd (flanneld's flag)")
	fs.StringVar(&c.EtcdUsername, "etcd-username", "", "etcd user name (flanneld's flag)")
	fs.StringVar(&c.EtcdPassword, "etcd-password", "", "etcd password (flanneld's flag)")
	fs.StringVar(&c.Iface, "iface", "", "underlay interface, by name or address (default: the default route's interface)")
	fs.StringVar(&publicIP, "public-ip", "", "address other nodes reach this one at (default: the underlay interface's)")
	fs.StringVar(&publicIP6, "public-ipv6", "", "IPv6 address other nodes reach this one at, in networks with IPv6 (flanneld's flag; default: the underlay interface's global IPv6 address, if any)")
	fs.StringVar(&c.SubnetFile, "subnet-file", "/run/flannel/subnet.env", "where to write flannel's subnet.env")
	fs.DurationVar(&c.LeaseTTL, "subnet-lease-ttl", store.DefaultTTL, "TTL of this node's subnet lease in etcd; renewed continuously")
	fs.StringVar(&vtepMAC, "vtep-mac", "", "this node's VTEP MAC (default: derived from /etc/machine-id and the public IP, stable across reboots)")
	fs.StringVar(&c.PinPath, "pin-path", loader.DefaultPinPath, "bpffs directory for the data plane's maps, programs and links")
	fs.StringVar(&decap, "decap", string(loader.DecapTC), "receive path: tc (tc decap after the kernel's VXLAN GRO) or xdp (XDP decap, inner GRO, tc delivery)")
	fs.BoolVar(&c.GRODevice, "gro-device", true, "keep weftgro0, an external vxlan device whose socket gives VXLAN GRO, reassembles VXLAN that routers fragmented and encapsulates pods' own tunnels (it occupies the VXLAN port)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "127.0.0.1:9473", "address of the /healthz and /metrics endpoint; empty disables it")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&c.IPMasq, "ip-masq", false, "masquerade pod traffic to destinations outside the cluster network, never between pods (flanneld's flag; nftables table ip weft)")
	fs.BoolVar(&c.CleanupOnExit, "cleanup-on-exit", false, "on SIGTERM remove the data plane and release the subnet lease (default: leave both)")
	fs.BoolVar(&c.KubeSubnetMgr, "kube-subnet-mgr", false, "take the subnet and peers from Kubernetes Node objects instead of etcd (flanneld's flag)")
	fs.StringVar(&c.Kube.APIURL, "kube-api-url", "", "kube-apiserver URL (flanneld's flag; default: the kubeconfig's, or in-cluster)")
	fs.StringVar(&c.Kube.Kubeconfig, "kubeconfig-file", "", "kubeconfig file (flanneld's flag; default: in-cluster service account)")
	fs.StringVar(&c.Kube.AnnotationPrefix, "kube-annotation-prefix", kube.DefaultAnnotationPrefix, "prefix of the Node annotations holding leases (flanneld's flag)")
	fs.StringVar(&c.Kube.NetConfPath, "net-config-path", kube.DefaultNetConfPath, "network config file in Kubernetes mode, etcd's <prefix>/config JSON (flanneld's flag)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: weftd [flags]\n\nWeft node daemon: takes a pod subnet from etcd or Kubernetes (flannel's schemas) and keeps the node's BPF data plane in step.\nEvery flag can also be set as FLANNELD_<FLAG> (e.g. FLANNELD_IFACE); the command line wins.\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := flagsFromEnv(fs, getenv); err != nil {
		return c, err
	}
	if c.KubeSubnetMgr {
		if _, err := kube.NewAnnotations(c.Kube.AnnotationPrefix); err != nil {
			return c, fmt.Errorf("--kube-annotation-prefix: %w", err)
		}
		if c.Kube.NetConfPath == "" {
			return c, errors.New("--net-config-path must not be empty")
		}
		c.Kube.NodeName = getenv("NODE_NAME")
		c.Kube.PodName, c.Kube.PodNamespace = getenv("POD_NAME"), getenv("POD_NAMESPACE")
		if c.Kube.NodeName == "" && (c.Kube.PodName == "" || c.Kube.PodNamespace == "") {
			return c, errors.New("--kube-subnet-mgr needs NODE_NAME, or POD_NAME and POD_NAMESPACE, in the environment")
		}
	}

	for _, e := range strings.Split(endpoints, ",") {
		e = strings.TrimSpace(e)
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("--etcd-endpoints: %q is not an http(s)://host:port URL", e)
		}
		c.EtcdEndpoints = append(c.EtcdEndpoints, e)
	}
	if !strings.HasPrefix(c.EtcdPrefix, "/") {
		return c, fmt.Errorf("--etcd-prefix %q must start with /", c.EtcdPrefix)
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		return c, errors.New("--etcd-certfile and --etcd-keyfile go together")
	}
	for _, f := range []string{c.EtcdCAFile, c.EtcdCertFile, c.EtcdKeyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return c, fmt.Errorf("etcd TLS file: %w", err)
		}
	}
	if publicIP != "" {
		ip, err := netip.ParseAddr(publicIP)
		if err != nil || !ip.Is4() {
			return c, fmt.Errorf("--public-ip %q is not an IPv4 address", publicIP)
		}
		c.PublicIP = ip
	}
	if publicIP6 != "" {
		ip, err := flannel.ParsePublicIPv6(publicIP6)
		if err != nil {
			return c, fmt.Errorf("--public-ipv6 %q is not a unicast IPv6 address", publicIP6)
		}
		c.PublicIPv6 = ip
	}
	if vtepMAC != "" {
		mac, err := net.ParseMAC(vtepMAC)
		if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			return c, fmt.Errorf("--vtep-mac %q is not a unicast 6-byte MAC", vtepMAC)
		}
		c.VtepMAC = mac
	}
	if c.LeaseTTL < 5*time.Second {
		return c, fmt.Errorf("--subnet-lease-ttl %v is too short (minimum 5s)", c.LeaseTTL)
	}
	if c.SubnetFile == "" {
		return c, errors.New("--subnet-file must not be empty")
	}
	if c.PinPath == "" || !strings.HasPrefix(c.PinPath, "/") {
		return c, fmt.Errorf("--pin-path %q must be an absolute path", c.PinPath)
	}
	d, err := loader.ParseDecapMode(decap)
	if err != nil {
		return c, fmt.Errorf("--decap: %w", err)
	}
	c.Decap = d
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return c, fmt.Errorf("--metrics-addr %q: %w", c.MetricsAddr, err)
		}
	}
	if err := c.LogLevel.Set(logLevel); err != nil {
		return c, fmt.Errorf("--log-level: %w", err)
	}
	return c, nil
}

// flagsFromEnv sets every flag not given on the command line from
// FLANNELD_<FLAG>, as flanneld's flagutil.SetFlagsFromEnv does.
func flagsFromEnv(fs *pflag.FlagSet, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := envName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
		}
	})
	return errors.Join(errs...)
}

// envName is the environment variable of a flag: FLANNELD_KUBE_SUBNET_MGR.
func envName(flag string) string {
	return "FLANNELD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, pflag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weftd: %v\n", err)
		os.Exit(2)
	}
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "weftd: %v\n", err)
		os.Exit(1)
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		if errors.As(err, new(flagError)) {
			fmt.Fprintf(os.Stderr, "weftd: %v\n", err)
			os.Exit(2)
		}
		log.Error("weftd failed", zap.Error(cliargs.NeedsRoot(err, "weftd")))
		os.Exit(1)
	}
}

// flagError is a flag value that run found unusable on this node before
// changing anything (no such --iface, an --etcd-cafile without a
// certificate); weftd exits 2 as for the values parseFlags rejects.
type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }
func (e flagError) Unwrap() error { return e.err }

// newLogger writes structured JSON logs to stderr.
func newLogger(level zapcore.Level) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	return zc.Build()
}

// etcdTLS builds the client TLS config from the flanneld-style file flags;
// nil when none are given.
func etcdTLS(c config) (*tls.Config, error) {
	if c.EtcdCAFile == "" && c.EtcdCertFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.EtcdCAFile != "" {
		pem, err := os.ReadFile(c.EtcdCAFile)
		if err != nil {
			return nil, fmt.Errorf("read --etcd-cafile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--etcd-cafile %s holds no PEM certificate", c.EtcdCAFile)
		}
		tc.RootCAs = pool
	}
	if c.EtcdCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.EtcdCertFile, c.EtcdKeyFile)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
