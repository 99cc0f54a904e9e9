package main

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"

	"github.com/weftnet/weft/loader"
)

// errCodeNoAddress is the CNI error code (plugin-specific range, >= 100)
// for an exhausted node subnet.
const errCodeNoAddress uint = 100

// pool hands out pod addresses from the node subnets with host-local's
// allocator and its on-disk store, used in-process: one file per address
// under <dataDir>/ipam/<network name>/, holding the container ID and
// interface name, so the state is the one operators know from host-local.
// A dual-stack node has one allocator per family over the one store, as
// host-local has with two ranges: DEL releases both by container ID.
type pool struct {
	store  *disk.Store
	allocs []*allocator.IPAllocator // one per subnet; nil when opened for release only
	nets   []netip.Prefix           // the subnets, in allocs' order
}

func ipamDir(dataDir string) string { return filepath.Join(dataDir, "ipam") }

// openPool opens the store for allocating one address from each subnet.
// Each range starts at .2 (::2): .0 is the node (weft0) and .1 the gateway
// no device owns, in both families.
func openPool(dataDir, network string, subnets []netip.Prefix) (*pool, error) {
	p, err := openStore(dataDir, network)
	if err != nil {
		return nil, err
	}
	for _, subnet := range subnets {
		rs := allocator.RangeSet{{
			Subnet:     types.IPNet(*prefixToIPNet(subnet.Masked())),
			RangeStart: loader.GatewayIP(subnet).Next().AsSlice(),
			Gateway:    loader.GatewayIP(subnet).AsSlice(),
		}}
		if err := rs.Canonicalize(); err != nil {
			p.Close()
			return nil, fmt.Errorf("address range of %s: %w", subnet, err)
		}
		// The id names the allocator's round-robin cursor in the store
		// (last_reserved_ip.<id>): one per family, IPv4's 0 as before.
		id := 0
		if subnet.Addr().Is6() {
			id = 1
		}
		p.allocs = append(p.allocs, allocator.NewIPAllocator(&rs, p.store, id))
		p.nets = append(p.nets, subnet.Masked())
	}
	return p, nil
}

// openStore opens the store alone: enough to look up and release, which DEL
// must manage even when subnet.env is gone.
func openStore(dataDir, network string) (*pool, error) {
	s, err := disk.New(network, ipamDir(dataDir))
	if err != nil {
		return nil, fmt.Errorf("open address store in %s: %w", ipamDir(dataDir), err)
	}
	return &pool{store: s}, nil
}

func (p *pool) Close() error { return p.store.Close() }

// allocate reserves the next free address of each subnet for the
// attachment and returns them with the subnet length, in the subnets'
// order. An exhausted subnet is errCodeNoAddress naming it; the addresses
// already reserved stay reserved for the caller's rollback (release) to free.
func (p *pool) allocate(containerID, ifName string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, alloc := range p.allocs {
		ipc, err := alloc.Get(containerID, ifName, nil)
		if err != nil {
			// The allocator has no sentinel; its message is stable API in practice.
			if strings.Contains(err.Error(), "no IP addresses available") {
				return nil, types.NewError(errCodeNoAddress,
					fmt.Sprintf("allocate address: node subnet %s is exhausted", p.nets[i]), err.Error())
			}
			return nil, fmt.Errorf("allocate address in %s: %w", p.nets[i], err)
		}
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones))
	}
	return out, nil
}

// release frees whatever the attachment holds; nothing held is fine.
func (p *pool) release(containerID, ifName string) error {
	if err := p.store.Lock(); err != nil {
		return fmt.Errorf("release address: lock store: %w", err)
	}
	defer p.store.Unlock()
	if err := p.store.ReleaseByID(containerID, ifName); err != nil {
		return fmt.Errorf("release address of %s/%s: %w", containerID, ifName, err)
	}
	return nil
}

// held returns the addresses the attachment holds.
func (p *pool) held(containerID, ifName string) ([]netip.Addr, error) {
	if err := p.store.Lock(); err != nil {
		return nil, fmt.Errorf("look up addresses: lock store: %w", err)
	}
	defer p.store.Unlock()
	var out []netip.Addr
	for _, ip := range p.store.GetByID(containerID, ifName) {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
		}
	}
	return out, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
