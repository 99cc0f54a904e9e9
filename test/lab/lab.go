// Package lab runs a Weft cluster on one machine: a topo lab (namespaces as
// nodes on one underlay segment), a real etcd reachable on the underlay,
// real weftd processes on Weft nodes, flannel-style kernel-vxlan nodes
// programmed from their etcd leases, and pods. The end-to-end tests, the
// benchmarks' daemon runs and the weft-lab command all build clusters
// through it.
//
// Everything it makes is named after one run-unique prefix and recorded in
// a state file under the run directory, so Down can remove it even after
// the process that made it was killed.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/etcdtest"
	"github.com/weftnet/weft/test/topo"
)

// DefaultRunRoot holds one directory per lab run.
const DefaultRunRoot = "/run/weft-lab"

// metricsPort is where every weftd serves /healthz and /metrics, on its
// node's underlay address.
const metricsPort = 9473

// Options configures New.
type Options struct {
	Prefix  string       // run-unique name prefix; generated when empty
	RunRoot string       // parent of RunDir; default DefaultRunRoot
	RunDir  string       // state, logs, subnet files, etcd data; default <RunRoot>/<prefix>
	BinDir  string       // directory holding weftd, weftctl, weft-cni
	Network netip.Prefix // default 10.244.0.0/16
	// Network6, if valid, enables IPv6 pods (flannel's EnableIPv6,
	// IPv6Network, IPv6SubnetLen 64): dual-stack, or IPv6-only with
	// IPv6Only (EnableIPv4 false). Used by the default NetConfig.
	Network6 netip.Prefix
	IPv6Only bool
	// UnderlayCIDR6 puts IPv6 on the underlay (topo.Options); with
	// NoUnderlayIPv4 the underlay is IPv6-only and etcd is reached over
	// IPv6. Weft nodes publish their IPv6 underlay address (--public-ipv6)
	// when the network has IPv6 pods.
	UnderlayCIDR6  netip.Prefix
	NoUnderlayIPv4 bool
	NetConfig      string // <prefix>/config JSON; default a vxlan config for Network (and Network6)
	WireLike       bool   // underlay veths behave like a wire (topo.SetWireLike)
	// Store is where leases live: StoreEtcd (default) or StoreKube (Node
	// objects on a real kube-apiserver, weftd --kube-subnet-mgr).
	Store Store
	// Manifest is applied in StoreKube mode: its ServiceAccount and RBAC
	// are what weftd runs with. Default: deploy/kube-weft.yml as built in.
	Manifest string
	// ReadyTimeout bounds how long StartWeftd waits for /healthz; default
	// 30 s. A kube-mode weftd lists every Node before it is ready: tens of
	// seconds at 50,000 Nodes on a loaded 2-core machine.
	ReadyTimeout time.Duration
	Logf         func(format string, args ...any)
}

// Cluster is a running lab.
type Cluster struct {
	Opts  Options
	Lab   *topo.Lab
	Etcd  *etcdtest.Server
	Fwd   *etcdtest.Forwarder
	Kube  *Kube // StoreKube mode only
	Nodes []*Node

	EtcdPrefix string
	pinRoot    string
	mu         sync.Mutex
	closed     bool
	flannels   []*flannelNode
}

// Kind says what runs on a node.
type Kind string

const (
	KindWeft    Kind = "weft"    // real weftd
	KindFlannel Kind = "flannel" // kernel vxlan programmed from etcd leases, flannel v3 style
)

// Node is one lab node.
type Node struct {
	Name       string
	Kind       Kind
	Topo       *topo.Node
	PinPath    string // Weft nodes
	SubnetFile string
	CNIDataDir string
	Cmd        *exec.Cmd // weftd, while running
	Pods       []*topo.Pod
	Subnet     netip.Prefix // IPv4 pod subnet; invalid on an IPv6-only network
	Subnet6    netip.Prefix // IPv6 pod subnet; invalid without IPv6
	VtepMAC    net.HardwareAddr
	cluster    *Cluster
	podCIDR    netip.Prefix // StoreKube: what the lab assigned the Node
	podCIDR6   netip.Prefix // StoreKube: its IPv6 podCIDR
	// KubeEnv is the environment of a kube-mode weftd (the DaemonSet's
	// downward-API variables); empty means NODE_NAME=<Name>.
	KubeEnv []string
}

// State is what a run records in <run dir>/state.json: enough for Down to
// undo a run whose process died, and for `weft-lab status` to describe it.
type State struct {
	Prefix  string      `json:"prefix"`
	PinRoot string      `json:"pin_root"`
	RunDir  string      `json:"run_dir"`
	PID     int         `json:"pid"`
	Etcd    string      `json:"etcd,omitempty"`
	KubeAPI string      `json:"kube_api,omitempty"`
	Nodes   []NodeState `json:"nodes,omitempty"`
}

// NodeState describes one node of a run.
type NodeState struct {
	Name       string     `json:"name"`
	Kind       Kind       `json:"kind"`
	NSPath     string     `json:"netns"`
	UnderlayIP netip.Addr `json:"underlay_ip"`
	Subnet     string     `json:"subnet"`
	Subnet6    string     `json:"subnet6,omitempty"`
	PinPath    string     `json:"pin_path,omitempty"`
	Pods       []PodState `json:"pods"`
}

// PodState describes one pod.
type PodState struct {
	Name   string     `json:"name"`
	NSPath string     `json:"netns"`
	IP     netip.Addr `json:"ip"`
	IP6    netip.Addr `json:"ip6,omitzero"`
}

// New builds the underlay, starts etcd, exposes it on the underlay at
// <underlay>.2:2379 and writes the network config.
func New(opts Options) (*Cluster, error) {
	if opts.Network == (netip.Prefix{}) {
		opts.Network = netip.MustParsePrefix("10.244.0.0/16")
	}
	if opts.NetConfig == "" {
		opts.NetConfig = defaultNetConfig(opts)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	if opts.Prefix == "" {
		b := make([]byte, 3)
		rand.Read(b)
		opts.Prefix = "wl" + hex.EncodeToString(b)
	}
	if opts.RunRoot == "" {
		opts.RunRoot = DefaultRunRoot
	}
	if opts.RunDir == "" {
		opts.RunDir = filepath.Join(opts.RunRoot, opts.Prefix)
	}
	// Logs live in the run directory, which Close removes.
	tl, err := topo.New(topo.Options{Prefix: opts.Prefix, KeepLogs: true, LogDir: filepath.Join(opts.RunDir, "logs"),
		UnderlayCIDR6: opts.UnderlayCIDR6, NoUnderlayIPv4: opts.NoUnderlayIPv4})
	if err != nil {
		return nil, err
	}
	c := &Cluster{Opts: opts, Lab: tl, EtcdPrefix: flannel.DefaultPrefix,
		pinRoot: filepath.Join(loader.BPFFSRoot, "weft-lab-"+opts.Prefix)}
	if err := c.init(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// defaultNetConfig is flannel's network config for the options: a vxlan
// backend on Network, with IPv6 (EnableIPv6, IPv6Network, a /64 per node)
// when Network6 is set, and without IPv4 (EnableIPv4 false) when IPv6Only.
func defaultNetConfig(o Options) string {
	backend := `"Backend":{"Type":"vxlan","VNI":1,"Port":8472}`
	switch {
	case o.Network6.IsValid() && o.IPv6Only:
		return fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"%s","IPv6SubnetLen":64,%s}`, o.Network6, backend)
	case o.Network6.IsValid():
		return fmt.Sprintf(`{"Network":"%s","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"%s","IPv6SubnetLen":64,%s}`, o.Network, o.Network6, backend)
	}
	return fmt.Sprintf(`{"Network":"%s","SubnetLen":24,%s}`, o.Network, backend)
}

func (c *Cluster) init() error {
	if err := os.MkdirAll(c.Opts.RunDir, 0o700); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	if err := c.writeState(); err != nil {
		return err
	}
	if c.Opts.WireLike {
		if err := c.Lab.SetWireLike(true); err != nil {
			return err
		}
	}
	var err error
	c.Opts.Logf("lab %s: state in %s", c.Opts.Prefix, c.Opts.RunDir)
	c.Opts.Logf("starting etcd")
	if c.Etcd, err = etcdtest.Start(filepath.Join(c.Opts.RunDir, "etcd")); err != nil {
		return err
	}
	addr, err := c.Lab.ServiceAddrAny(2) // IPv6 on an IPv6-only underlay
	if err != nil {
		return err
	}
	if c.Fwd, err = c.Etcd.Expose(func(fn func() error) error { return topo.Do(c.Lab.UnderlayPath, fn) }, netip.AddrPortFrom(addr, 2379)); err != nil {
		return err
	}
	if c.Opts.Store == StoreKube {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		return c.initKube(ctx)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Etcd.Put(ctx, flannel.ConfigKey(c.EtcdPrefix), c.Opts.NetConfig); err != nil {
		return fmt.Errorf("write network config: %w", err)
	}
	c.Opts.Logf("etcd ready at %s, network config %s", c.Fwd.URL(), c.Opts.NetConfig)
	return nil
}

// SaveState records the run (called on creation; call again after adding
// nodes and pods so `status` sees them).
func (c *Cluster) SaveState() error { return c.writeState() }

func (c *Cluster) writeState() error {
	st := State{Prefix: c.Opts.Prefix, PinRoot: c.pinRoot, RunDir: c.Opts.RunDir, PID: os.Getpid()}
	if c.Fwd != nil {
		st.Etcd = c.Fwd.URL()
	}
	if c.Kube != nil && c.Kube.Fwd != nil {
		st.KubeAPI = c.Kube.Fwd.URL()
	}
	for _, n := range c.Nodes {
		ns := NodeState{Name: n.Name, Kind: n.Kind, NSPath: n.Topo.NSPath, UnderlayIP: n.Topo.Addr(), Pods: []PodState{}}
		if n.Subnet.IsValid() {
			ns.Subnet = n.Subnet.String()
		}
		if n.Subnet6.IsValid() {
			ns.Subnet6 = n.Subnet6.String()
		}
		if n.Kind == KindWeft {
			ns.PinPath = n.PinPath
		}
		for _, p := range n.Pods {
			ns.Pods = append(ns.Pods, PodState{Name: p.Name, NSPath: p.NSPath, IP: p.IP, IP6: p.IP6})
		}
		st.Nodes = append(st.Nodes, ns)
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := filepath.Join(c.Opts.RunDir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(c.Opts.RunDir, "state.json")); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// LoadState reads the state a run recorded in runDir.
func LoadState(runDir string) (State, error) {
	var st State
	b, err := os.ReadFile(filepath.Join(runDir, "state.json"))
	if err != nil {
		return st, fmt.Errorf("read lab state in %s: %w", runDir, err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse lab state in %s: %w", runDir, err)
	}
	return st, nil
}

// Close stops every process, removes every pin, namespace and the run
// directory. Safe to call twice and on a half-built cluster.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	var errs []error
	for _, f := range c.flannels {
		f.stop()
	}
	for _, n := range c.Nodes {
		if n.Cmd != nil {
			c.Lab.Stop(n.Cmd)
		}
		if n.Kind == KindWeft {
			n.Topo.Do(func() error { return loader.TeardownNode(n.PinPath, "") })
		}
	}
	if c.Kube != nil {
		c.Kube.API.Close()
	}
	if c.Etcd != nil {
		c.Etcd.Close()
	}
	errs = append(errs, c.Lab.Close())
	errs = append(errs, removePins(c.pinRoot))
	errs = append(errs, os.RemoveAll(c.Opts.RunDir))
	return errors.Join(errs...)
}

// removePins detaches and deletes every node's pins under root.
func removePins(root string) error {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range ents {
		pin := filepath.Join(root, e.Name())
		errs = append(errs, loader.Remove(pin))
		// Every process of the run is gone by now (see Close and Down).
		errs = append(errs, loader.ForgetPinPath(pin))
	}
	errs = append(errs, os.RemoveAll(root))
	return errors.Join(errs...)
}

// Down removes what the run in runDir left behind: its processes and
// namespaces, its pins and the directory itself.
func Down(runDir string) error {
	st, err := LoadState(runDir)
	if err != nil {
		return err
	}
	if st.PID > 0 && st.PID != os.Getpid() {
		// The lab process itself, if it still runs (and the PID was not reused).
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.PID)); err == nil && strings.Contains(string(cmdline), "weft") {
			if p, err := os.FindProcess(st.PID); err == nil {
				p.Kill()
			}
		}
	}
	var errs []error
	errs = append(errs, topo.CleanupPrefix(st.Prefix))
	errs = append(errs, removePins(st.PinRoot))
	errs = append(errs, os.RemoveAll(st.RunDir))
	return errors.Join(errs...)
}

// AddWeftNode creates a node and starts weftd on it with extra flags.
func (c *Cluster) AddWeftNode(name string, extra ...string) (*Node, error) {
	tn, err := c.Lab.AddNode(name)
	if err != nil {
		return nil, err
	}
	return c.startWeftNode(tn, extra...)
}

// AddRoutedWeftNode is AddWeftNode for a node behind two routers and a
// smaller-MTU link (topo.AddRoutedNode): PMTU and fragmentation tests.
func (c *Cluster) AddRoutedWeftNode(name string, o topo.RoutedOptions, extra ...string) (*Node, error) {
	tn, err := c.Lab.AddRoutedNode(name, o)
	if err != nil {
		return nil, err
	}
	return c.startWeftNode(tn, extra...)
}

func (c *Cluster) startWeftNode(tn *topo.Node, extra ...string) (*Node, error) {
	name := tn.Name
	n := &Node{Name: name, Kind: KindWeft, Topo: tn, cluster: c,
		PinPath:    filepath.Join(c.pinRoot, name),
		SubnetFile: filepath.Join(c.Opts.RunDir, name, "subnet.env"),
		CNIDataDir: filepath.Join(c.Opts.RunDir, name, "cni")}
	c.Nodes = append(c.Nodes, n)
	if err := c.StartWeftd(n, extra...); err != nil {
		return nil, err
	}
	return n, nil
}

// WeftdArgs are the flags a node's weftd runs with, before extra ones.
func (c *Cluster) WeftdArgs(n *Node, extra ...string) []string {
	args := []string{
		"--etcd-endpoints", c.Fwd.URL(),
		"--etcd-prefix", c.EtcdPrefix,
		"--iface", n.Topo.UnderlayIf,
		"--pin-path", n.PinPath,
		"--subnet-file", n.SubnetFile,
		"--metrics-addr", netip.AddrPortFrom(n.Topo.Addr(), metricsPort).String(),
		"--subnet-lease-ttl", "30s",
	}
	if c.Opts.Network6.IsValid() && n.Topo.UnderlayIP6.IsValid() {
		args = append(args, "--public-ipv6", n.Topo.UnderlayIP6.String())
	}
	return append(args, extra...)
}

// StartWeftd starts the node's weftd and waits until /healthz says ready.
func (c *Cluster) StartWeftd(n *Node, extra ...string) error {
	name, args := filepath.Join(c.Opts.BinDir, "weftd"), c.WeftdArgs(n, extra...)
	if c.Opts.Store == StoreKube {
		var err error
		if name, args, err = c.kubeWeftdCommand(n, extra...); err != nil {
			return err
		}
	}
	cmd, err := n.Topo.Start(name, args...)
	if err != nil {
		return fmt.Errorf("start weftd on %s: %w", n.Name, err)
	}
	n.Cmd = cmd
	deadline := time.Now().Add(c.Opts.ReadyTimeout)
	for {
		code, _, err := n.Get("/healthz")
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case <-c.Lab.Exited(cmd):
			return fmt.Errorf("weftd on %s exited before becoming ready:\n%s", n.Name, n.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("weftd on %s not ready after %v (last: %d %v):\n%s", n.Name, c.Opts.ReadyTimeout, code, err, n.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	n.Subnet, n.Subnet6 = env.Subnet, env.IPv6Subnet
	c.Opts.Logf("node %s: weftd ready, subnets %s", n.Name, joinValid(n.Subnet, n.Subnet6))
	return nil
}

// Log returns the node's current weftd log.
func (n *Node) Log() string {
	if n.Cmd == nil {
		return ""
	}
	b, _ := os.ReadFile(n.cluster.Lab.LogPath(n.Cmd))
	return string(b)
}

// Get fetches path from the node's weftd endpoint, dialling inside the node.
func (n *Node) Get(path string) (int, string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := topo.Do(n.Topo.NSPath, func() error {
			var err error
			conn, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + netip.AddrPortFrom(n.Topo.Addr(), metricsPort).String() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Metric returns one Prometheus sample's value from the node's /metrics,
// e.g. `weft_tunnels` or `weft_packets_total{reason="encap"}`.
func (n *Node) Metric(name string) (float64, error) {
	code, body, err := n.Get("/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics on %s: status %d", n.Name, code)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				return 0, fmt.Errorf("metric %s: %w", name, err)
			}
			return f, nil
		}
	}
	return 0, fmt.Errorf("metric %s not exposed by %s", name, n.Name)
}

// Maps opens the node's pinned maps; the caller closes them.
func (n *Node) Maps() (*maps.Set, error) { return maps.OpenPinned(n.PinPath) }

// Tunnels reads the node's tunnels map straight from its pins.
func (n *Node) Tunnels() ([]maps.Tunnel, error) {
	set, err := n.Maps()
	if err != nil {
		return nil, err
	}
	defer set.Close()
	return set.Tunnels.All()
}

// readSubnetEnv reads a node's subnet.env with flannel's format (both
// families' subnets, masked).
func readSubnetEnv(path string) (flannel.SubnetEnv, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return flannel.SubnetEnv{}, fmt.Errorf("read %s: %w", path, err)
	}
	env, err := flannel.ParseSubnetEnv(b)
	if err != nil {
		return flannel.SubnetEnv{}, fmt.Errorf("%s: %w", path, err)
	}
	return env, nil
}

// joinValid prints the valid prefixes among ps, "none" if none is.
func joinValid(ps ...netip.Prefix) string {
	var out []string
	for _, p := range ps {
		if p.IsValid() {
			out = append(out, p.String())
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, " ")
}
