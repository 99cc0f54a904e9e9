package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/test/topo"
)

// flannelNode plays flanneld's vxlan backend for one kernel-vxlan node: it
// writes the node's lease in flannel's exact JSON (with an etcd lease, as
// flanneld does) and programs flannel.1 from the other nodes' leases, one
// route + neighbour + FDB entry per remote host (topo.AddFlannelPeer). It
// deliberately parses leases with its own small struct rather than Weft's
// control/flannel package, so the mixed-cluster tests check Weft against an
// independent reading of the schema.
type flannelNode struct {
	node   *Node
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	peers map[string]topo.FlannelPeer // etcd key -> programmed peer
}

// flannelLeaseJSON is a vxlan lease exactly as flanneld marshals it.
func flannelLeaseJSON(publicIP netip.Addr, vni int, vtep net.HardwareAddr) string {
	return fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":%d,"VtepMAC":"%s"}}`,
		publicIP, vni, vtep)
}

// flannelLeaseJSONDual is a dual-stack (publicIP valid) or IPv6-only
// vxlan lease as flanneld marshals it: PublicIPv6 and BackendV6Data beside
// the IPv4 fields; an IPv6-only lease has PublicIP 0.0.0.0 and no
// BackendData (control/flannel/lease6.go shows the shapes).
func flannelLeaseJSONDual(publicIP, publicIP6 netip.Addr, vni int, vtep, vtep6 net.HardwareAddr) string {
	if !publicIP.IsValid() {
		return fmt.Sprintf(`{"PublicIP":"0.0.0.0","PublicIPv6":"%s","BackendType":"vxlan","BackendV6Data":{"VNI":%d,"VtepMAC":"%s"}}`,
			publicIP6, vni, vtep6)
	}
	return fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":%d,"VtepMAC":"%s"},"BackendV6Data":{"VNI":%d,"VtepMAC":"%s"}}`,
		publicIP, publicIP6, vni, vtep, vni, vtep6)
}

// flannelSubnetKey is flannel's MakeSubnetKey: "10.244.1.0-24", with
// "&<v6 subnet>-<len>" for an IPv6 subnet, "0.0.0.0-0&..." without IPv4.
func flannelSubnetKey(sn, sn6 netip.Prefix) string {
	if !sn6.IsValid() {
		return strings.Replace(sn.String(), "/", "-", 1)
	}
	v4 := "0.0.0.0-0"
	if sn.IsValid() {
		v4 = strings.Replace(sn.String(), "/", "-", 1)
	}
	return v4 + "&" + strings.Replace(sn6.String(), "/", "-", 1)
}

// AddFlannelNode creates a kernel-vxlan node that takes subnet (the test or
// the operator chooses it, as a flannel reservation would), writes its lease
// with a TTL and keeps flannel.1 in step with the other leases.
func (c *Cluster) AddFlannelNode(name string, subnet netip.Prefix) (*Node, error) {
	return c.AddFlannelNodeDual(name, subnet, netip.Prefix{})
}

// AddFlannelNodeDual is AddFlannelNode for a dual-stack node (subnet and
// subnet6) or an IPv6-only one (subnet invalid): flannel-v6.1 beside (or
// instead of) flannel.1, a lease with PublicIPv6 and BackendV6Data, and
// pods with an address of each family. It needs an IPv6 underlay.
func (c *Cluster) AddFlannelNodeDual(name string, subnet, subnet6 netip.Prefix) (*Node, error) {
	tn, err := c.Lab.AddNode(name)
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Kind: KindFlannel, Topo: tn, cluster: c, Subnet: subnet.Masked(), Subnet6: subnet6.Masked(),
		SubnetFile: filepath.Join(c.Opts.RunDir, name, "subnet.env")}
	if !subnet.IsValid() {
		n.Subnet = netip.Prefix{}
	}
	if !subnet6.IsValid() {
		n.Subnet6 = netip.Prefix{}
	}
	c.Nodes = append(c.Nodes, n)
	vtep, err := tn.SetupFlannelVXLAN(topo.FlannelOptions{Subnet: n.Subnet, Subnet6: n.Subnet6, VNI: 1, Port: 8472})
	if err != nil {
		return nil, err
	}
	n.VtepMAC = vtep

	if c.Opts.Store == StoreKube {
		f := &flannelNode{node: n, cancel: func() {}, done: make(chan struct{}), peers: map[string]topo.FlannelPeer{}}
		c.flannels = append(c.flannels, f)
		if err := c.addKubeFlannelNode(f); err != nil {
			return nil, err
		}
		c.Opts.Logf("node %s: kernel vxlan (flannel v3 style, Node annotations), subnets %s, vtep %s", name, joinValid(n.Subnet, n.Subnet6), vtep)
		return n, nil
	}
	cli, err := c.Etcd.Client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &flannelNode{node: n, cli: cli, cancel: cancel, done: make(chan struct{}), peers: map[string]topo.FlannelPeer{}}
	rev, err := f.announce(ctx, c.EtcdPrefix)
	if err != nil {
		cancel()
		cli.Close()
		return nil, err
	}
	c.flannels = append(c.flannels, f)
	go f.watch(ctx, c.EtcdPrefix, rev)
	c.Opts.Logf("node %s: kernel vxlan (flannel v3 style), subnets %s, vtep %s", name, joinValid(n.Subnet, n.Subnet6), vtep)
	return n, nil
}

// announce writes the node's lease, kept alive like flanneld's, and
// programs the peers that already exist.
func (f *flannelNode) announce(ctx context.Context, prefix string) (int64, error) {
	n := f.node
	grant, err := f.cli.Grant(ctx, 60)
	if err != nil {
		return 0, fmt.Errorf("flannel node %s: grant lease: %w", n.Name, err)
	}
	if _, err := f.cli.KeepAlive(ctx, grant.ID); err != nil {
		return 0, fmt.Errorf("flannel node %s: keep lease alive: %w", n.Name, err)
	}
	key := prefix + "/subnets/" + flannelSubnetKey(n.Subnet, n.Subnet6)
	value := flannelLeaseJSON(n.Topo.UnderlayIP, 1, n.VtepMAC)
	if n.Subnet6.IsValid() {
		var ip4 netip.Addr
		if n.Subnet.IsValid() {
			ip4 = n.Topo.UnderlayIP
		}
		value = flannelLeaseJSONDual(ip4, n.Topo.UnderlayIP6, 1, n.Topo.Flannel.VtepMAC, n.Topo.Flannel.VtepMAC6)
	}
	if _, err := f.cli.Put(ctx, key, value, clientv3.WithLease(grant.ID)); err != nil {
		return 0, fmt.Errorf("flannel node %s: write lease: %w", n.Name, err)
	}
	return f.resync(ctx, prefix)
}

type flannelLease struct {
	PublicIP    string
	PublicIPv6  *string
	BackendType string
	BackendData struct {
		VtepMAC string
	}
	BackendV6Data struct {
		VtepMAC string
	}
}

// peerFromKV turns another node's lease into the peer flannel.1 (and
// flannel-v6.1) needs: a family goes in when the lease has its subnet,
// public address and VtepMAC. A Weft lease with an IPv6 subnet but no
// PublicIPv6 (IPv6 over the IPv4 underlay) gives flannel no IPv6 peer: it
// cannot carry IPv6 over IPv4, and neither can a real flannel node.
func (f *flannelNode) peerFromKV(prefix string, key, value []byte) (topo.FlannelPeer, bool) {
	name := strings.TrimPrefix(string(key), prefix+"/subnets/")
	if name == flannelSubnetKey(f.node.Subnet, f.node.Subnet6) {
		return topo.FlannelPeer{}, false
	}
	v4, v6, _ := strings.Cut(name, "&")
	sn, err := netip.ParsePrefix(strings.Replace(v4, "-", "/", 1))
	if err != nil {
		return topo.FlannelPeer{}, false
	}
	var l flannelLease
	if json.Unmarshal(value, &l) != nil || l.BackendType != "vxlan" {
		return topo.FlannelPeer{}, false
	}
	var p topo.FlannelPeer
	ip, err := netip.ParseAddr(l.PublicIP)
	mac, merr := net.ParseMAC(l.BackendData.VtepMAC)
	if sn.Bits() > 0 && err == nil && merr == nil {
		p.Subnet, p.PublicIP, p.VtepMAC = sn, ip, mac
	}
	if v6 != "" && l.PublicIPv6 != nil {
		sn6, err := netip.ParsePrefix(strings.Replace(v6, "-", "/", 1))
		ip6, ierr := netip.ParseAddr(*l.PublicIPv6)
		mac6, merr := net.ParseMAC(l.BackendV6Data.VtepMAC)
		if err == nil && ierr == nil && merr == nil {
			p.Subnet6, p.PublicIP6, p.VtepMAC6 = sn6, ip6, mac6
		}
	}
	if !p.Subnet.IsValid() && !p.Subnet6.IsValid() {
		return topo.FlannelPeer{}, false
	}
	return p, true
}

func (f *flannelNode) resync(ctx context.Context, prefix string) (int64, error) {
	resp, err := f.cli.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("flannel node %s: list leases: %w", f.node.Name, err)
	}
	seen := map[string]bool{}
	for _, kv := range resp.Kvs {
		if p, ok := f.peerFromKV(prefix, kv.Key, kv.Value); ok {
			seen[string(kv.Key)] = true
			f.program(string(kv.Key), p)
		}
	}
	f.mu.Lock()
	var gone []string
	for k := range f.peers {
		if !seen[k] {
			gone = append(gone, k)
		}
	}
	f.mu.Unlock()
	for _, k := range gone {
		f.unprogram(k)
	}
	return resp.Header.Revision, nil
}

func (f *flannelNode) program(key string, p topo.FlannelPeer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.peers[key]; ok {
		if old.PublicIP == p.PublicIP && old.VtepMAC.String() == p.VtepMAC.String() &&
			old.Subnet6 == p.Subnet6 && old.PublicIP6 == p.PublicIP6 && old.VtepMAC6.String() == p.VtepMAC6.String() {
			return
		}
		f.node.Topo.RemoveFlannelPeer(old)
	}
	if err := f.node.Topo.AddFlannelPeer(p); err == nil {
		f.peers[key] = p
	}
}

func (f *flannelNode) unprogram(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.peers[key]; ok {
		f.node.Topo.RemoveFlannelPeer(old)
		delete(f.peers, key)
	}
}

func (f *flannelNode) watch(ctx context.Context, prefix string, rev int64) {
	defer close(f.done)
	for ctx.Err() == nil {
		for resp := range f.cli.Watch(ctx, prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				key := string(ev.Kv.Key)
				if ev.Type == clientv3.EventTypeDelete {
					f.unprogram(key)
				} else if p, ok := f.peerFromKV(prefix, ev.Kv.Key, ev.Kv.Value); ok {
					f.program(key, p)
				}
			}
			rev = resp.Header.Revision
		}
		if ctx.Err() != nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
		if r, err := f.resync(ctx, prefix); err == nil {
			rev = r
		}
	}
}

func (f *flannelNode) stop() {
	f.cancel()
	if f.cli == nil { // Kubernetes mode: done closes when the informer stops, if it ever started
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
		}
		return
	}
	<-f.done
	f.cli.Close()
}
