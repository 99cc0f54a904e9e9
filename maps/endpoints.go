package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
)

// Endpoint is one local pod as the data plane sees it.
type Endpoint struct {
	IP      netip.Addr       `json:"ip"`
	IfIndex uint32           `json:"ifindex"`  // host-side veth
	MAC     net.HardwareAddr `json:"mac"`      // the pod's own MAC
	HostMAC net.HardwareAddr `json:"host_mac"` // host-side veth MAC, the pod's gateway MAC
}

// Validate checks what the data plane relies on.
func (e Endpoint) Validate() error {
	if !e.IP.IsValid() {
		return errors.New("endpoint: invalid IP")
	}
	if e.IfIndex == 0 {
		return fmt.Errorf("endpoint %s: ifindex 0", e.IP)
	}
	if len(e.MAC) != 6 || len(e.HostMAC) != 6 {
		return fmt.Errorf("endpoint %s: MACs must be 6 bytes (mac %q, host mac %q)", e.IP, e.MAC, e.HostMAC)
	}
	return nil
}

func endpointKey(ip netip.Addr) (bpf.WeftEndpointKey, error) {
	addr, err := addrTo16(ip)
	return bpf.WeftEndpointKey{Addr: addr}, err
}

func endpointFromBPF(k bpf.WeftEndpointKey, v bpf.WeftEndpointInfo) Endpoint {
	return Endpoint{
		IP:      addrFrom16(k.Addr),
		IfIndex: v.Ifindex,
		MAC:     macFrom6(v.Mac),
		HostMAC: macFrom6(v.HostMac),
	}
}

// EndpointMap is the `endpoints` hash: local pod IP -> its veth.
type EndpointMap struct{ m *ebpf.Map }

// NewEndpointMap wraps an open `endpoints` map.
func NewEndpointMap(m *ebpf.Map) *EndpointMap { return &EndpointMap{m: m} }

// Put adds or replaces the entry for e.IP.
func (em *EndpointMap) Put(e Endpoint) error {
	if err := e.Validate(); err != nil {
		return err
	}
	key, err := endpointKey(e.IP)
	if err != nil {
		return err
	}
	mac, _ := macTo6(e.MAC)
	hostMAC, _ := macTo6(e.HostMAC)
	val := bpf.WeftEndpointInfo{Ifindex: e.IfIndex, Mac: mac, HostMac: hostMAC}
	if err := em.m.Put(&key, &val); err != nil {
		return fmt.Errorf("put endpoint %s: %w", e.IP, err)
	}
	return nil
}

// Delete removes the entry for ip; ErrNotFound if there is none.
func (em *EndpointMap) Delete(ip netip.Addr) error {
	key, err := endpointKey(ip)
	if err != nil {
		return err
	}
	if err := em.m.Delete(&key); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete endpoint %s: %w", ip, ErrNotFound)
		}
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// Lookup returns the entry for ip; ErrNotFound if there is none.
func (em *EndpointMap) Lookup(ip netip.Addr) (Endpoint, error) {
	key, err := endpointKey(ip)
	if err != nil {
		return Endpoint{}, err
	}
	var val bpf.WeftEndpointInfo
	if err := em.m.Lookup(&key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Endpoint{}, fmt.Errorf("lookup endpoint %s: %w", ip, ErrNotFound)
		}
		return Endpoint{}, fmt.Errorf("lookup endpoint %s: %w", ip, err)
	}
	return endpointFromBPF(key, val), nil
}

// All returns every entry.
func (em *EndpointMap) All() ([]Endpoint, error) {
	var (
		key bpf.WeftEndpointKey
		val bpf.WeftEndpointInfo
		out []Endpoint
	)
	iter := em.m.Iterate()
	for iter.Next(&key, &val) {
		out = append(out, endpointFromBPF(key, val))
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	return out, nil
}
