package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

type flannelResult struct {
	list, program, total time.Duration
	peers                int
	routes, neighs, fdb  int
}

// flannelNode is a kernel-vxlan node (flannel.1 as flanneld creates it)
// and one netlink socket in its namespace.
type flannelNode struct {
	h   *netlink.Handle
	dev int
}

func newFlannelNode(c *lab.Cluster, name string) (*flannelNode, error) {
	tn, err := c.Lab.AddNode(name)
	if err != nil {
		return nil, err
	}
	own := netip.MustParsePrefix("10.250.0.0/24") // no remote() uses it
	if _, err := tn.SetupFlannelVXLAN(topo.FlannelOptions{Subnet: own, VNI: 1, Port: 8472}); err != nil {
		return nil, err
	}
	nsh, err := netns.GetFromPath(tn.NSPath)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, err
	}
	return &flannelNode{h: h, dev: tn.Flannel.DeviceIndex}, nil
}

type peer struct {
	sn  netip.Prefix
	ip  net.IP
	mac net.HardwareAddr
}

// decodePeer is flannel's reading of a lease: subnet.ParseSubnetKey, then
// json.Unmarshal of LeaseAttrs and of the vxlan BackendData. Only the
// remote() nodes count, so both sides program the same set (not w1).
func decodePeer(prefix string, key, value []byte) (peer, bool) {
	sn, err := netip.ParsePrefix(strings.Replace(strings.TrimPrefix(string(key), prefix+"/subnets/"), "-", "/", 1))
	if err != nil {
		return peer{}, false
	}
	var attrs struct {
		PublicIP    string
		BackendType string
		BackendData json.RawMessage
	}
	var data struct {
		VNI     uint16
		VtepMAC string
	}
	if json.Unmarshal(value, &attrs) != nil || attrs.BackendType != "vxlan" || json.Unmarshal(attrs.BackendData, &data) != nil {
		return peer{}, false
	}
	mac, err := net.ParseMAC(data.VtepMAC)
	ip, _ := netip.ParseAddr(attrs.PublicIP)
	if err != nil || !remotes.Contains(ip) {
		return peer{}, false
	}
	return peer{sn: sn, ip: ip.AsSlice(), mac: mac}, true
}

// program installs one remote host in flannel's order: neighbour, FDB, route.
func (f *flannelNode) program(p peer) error {
	gw := p.sn.Addr().AsSlice()
	if err := f.h.NeighSet(&netlink.Neigh{LinkIndex: f.dev, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: gw, HardwareAddr: p.mac}); err != nil {
		return fmt.Errorf("flannel: neighbour %s: %w", p.sn, err)
	}
	if err := f.h.NeighSet(&netlink.Neigh{LinkIndex: f.dev, State: netlink.NUD_PERMANENT, Family: unix.AF_BRIDGE,
		Flags: netlink.NTF_SELF, IP: p.ip, HardwareAddr: p.mac}); err != nil {
		return fmt.Errorf("flannel: fdb %s: %w", p.sn, err)
	}
	route := &netlink.Route{LinkIndex: f.dev, Scope: netlink.SCOPE_UNIVERSE,
		Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(p.sn.Bits(), 32)}, Gw: gw}
	route.SetFlag(netlink.FLAG_ONLINK)
	if err := f.h.RouteReplace(route); err != nil {
		return fmt.Errorf("flannel: route %s: %w", p.sn, err)
	}
	return nil
}

// flannelProgram programs every lease on a fresh flannel node, timed from
// the list.
func flannelProgram(ctx context.Context, st leaseStore, f *flannelNode, leases int) (flannelResult, error) {
	var r flannelResult
	start := time.Now()
	peers, err := st.list(ctx)
	if err != nil {
		return r, err
	}
	r.list = time.Since(start)
	for _, p := range peers {
		if err := f.program(p); err != nil {
			return r, err
		}
	}
	r.total = time.Since(start)
	r.program = r.total - r.list
	r.peers = len(peers)

	// Check the kernel holds what was asked.
	link, err := f.h.LinkByIndex(f.dev)
	if err != nil {
		return r, err
	}
	routes, err := f.h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return r, err
	}
	neighs, err := f.h.NeighList(f.dev, netlink.FAMILY_V4)
	if err != nil {
		return r, err
	}
	fdb, err := f.h.NeighList(f.dev, unix.AF_BRIDGE)
	if err != nil {
		return r, err
	}
	for _, rt := range routes {
		if rt.Gw != nil {
			r.routes++
		}
	}
	for _, nb := range neighs {
		if nb.State&netlink.NUD_PERMANENT != 0 {
			r.neighs++
		}
	}
	for _, e := range fdb {
		if e.IP != nil && !e.IP.IsUnspecified() {
			r.fdb++
		}
	}
	if r.peers != leases || r.routes != leases || r.neighs != leases || r.fdb != leases {
		return r, fmt.Errorf("flannel node holds %d routes, %d neighbours, %d fdb entries for %d peers, want %d each",
			r.routes, r.neighs, r.fdb, r.peers, leases)
	}
	return r, nil
}

// flannelJoins times single leases the flannel way: the store's event
// (etcd watch, Node informer), decode, three netlink requests.
func flannelJoins(ctx context.Context, st leaseStore, f *flannelNode, from, count int) ([]time.Duration, error) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := st.follow(fctx)
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for i := from; i < from+count; i++ {
		sn, _, _ := remote(i)
		start := time.Now()
		if err := st.put(ctx, i); err != nil {
			return nil, err
		}
	wait:
		for {
			select {
			case p, ok := <-events:
				if !ok {
					return nil, errors.New("flannel: the store's event stream ended")
				}
				if err := f.program(p); err != nil {
					return nil, err
				}
				if p.sn == sn {
					break wait
				}
			case <-time.After(30 * time.Second):
				return nil, fmt.Errorf("flannel: no event for %s after 30s", sn)
			}
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}
