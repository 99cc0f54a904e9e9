package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
)

// VXLANOverhead is what encapsulation adds to every packet (outer IPv4, UDP,
// VXLAN, inner Ethernet); pods get the underlay MTU minus this.
const VXLANOverhead = 50

// PinLayout versions the pinned maps' key and value layouts (WEFT_PIN_LAYOUT in bpf/weft.h).
const PinLayout = 3

// Defaults shared with flannel.
const (
	DefaultPort = 8472 // flannel's (and the Linux vxlan driver's historic) port; IANA's is 4789
	DefaultVNI  = 1
	// The vxlan driver spreads source ports over the local port range.
	DefaultSrcPortMin = 32768
	DefaultSrcPortMax = 61000
)

// Config is this node's parameters, read by every program.
type Config struct {
	UnderlayIfIndex uint32           `json:"underlay_ifindex"`
	UnderlayIP      netip.Addr       `json:"underlay_ip"`
	UnderlayMAC     net.HardwareAddr `json:"underlay_mac"`
	HostIfIndex     uint32           `json:"host_ifindex"` // weft0
	HostIP          netip.Addr       `json:"host_ip"`      // weft0's address
	VtepMAC         net.HardwareAddr `json:"vtep_mac"`
	VNI             uint32           `json:"vni"`
	Port            uint16           `json:"port"`
	MTU             uint16           `json:"mtu"` // underlay MTU
	SrcPortMin      uint16           `json:"src_port_min"`
	SrcPortMax      uint16           `json:"src_port_max"`
	Flags           uint32           `json:"flags"` // NodeFlag* bits
	Layout          uint32           `json:"layout"`
	GROIfIndex      uint32           `json:"gro_ifindex"` // weftgro0, 0: none
	// GROCellIfIndex is weftgc0 on nodes that aggregate after decap
	// (loader/grocell.go: tc-decap nodes); 0 delivers directly.
	GROCellIfIndex uint32 `json:"gro_cell_ifindex,omitempty"`
	// UnderlayIP6 is the node's IPv6 underlay address (flannel's
	// PublicIPv6), the source of outer IPv6 headers; invalid: none.
	UnderlayIP6 netip.Addr `json:"underlay_ip6,omitzero"`
	// HostIP6 is weft0's IPv6 address, the source of ICMPv6 errors Weft
	// sends; invalid: none.
	HostIP6 netip.Addr `json:"host_ip6,omitzero"`
}

// NodeFlagXDPDecap says Weft's XDP program is attached to the underlay and
// can hand decapsulated frames to tc; only then does from_underlay trust an
// XDP metadata tag.
const NodeFlagXDPDecap = uint32(bpf.WeftNodeFlagsNODE_F_XDP_DECAP)

// Validate checks what the data plane relies on.
func (c Config) Validate() error {
	switch {
	case c.UnderlayIfIndex == 0:
		return errors.New("config: underlay ifindex 0")
	case c.HostIfIndex == 0:
		return errors.New("config: host (weft0) ifindex 0")
	case !c.UnderlayIP.IsValid() && !c.UnderlayIP6.IsValid():
		return errors.New("config: no underlay address (IPv4 or IPv6)")
	case c.UnderlayIP.IsValid() && !c.UnderlayIP.Unmap().Is4():
		return fmt.Errorf("config: underlay IP %v is not IPv4", c.UnderlayIP)
	case c.UnderlayIP6.IsValid() && !isPlainIPv6(c.UnderlayIP6):
		return fmt.Errorf("config: underlay IPv6 %v is not IPv6", c.UnderlayIP6)
	case !c.HostIP.IsValid() && !c.HostIP6.IsValid():
		return errors.New("config: no host (weft0) address (IPv4 or IPv6)")
	case c.HostIP.IsValid() && !c.HostIP.Unmap().Is4():
		return fmt.Errorf("config: host IP %v is not IPv4", c.HostIP)
	case c.HostIP6.IsValid() && !isPlainIPv6(c.HostIP6):
		return fmt.Errorf("config: host IPv6 %v is not IPv6", c.HostIP6)
	case len(c.UnderlayMAC) != 6 || len(c.VtepMAC) != 6:
		return fmt.Errorf("config: MACs must be 6 bytes (underlay %q, vtep %q)", c.UnderlayMAC, c.VtepMAC)
	case c.VNI >= 1<<24:
		return fmt.Errorf("config: VNI %d does not fit 24 bits", c.VNI)
	case c.Port == 0:
		return errors.New("config: port 0")
	case c.MTU < 576+VXLANOverhead:
		return fmt.Errorf("config: underlay MTU %d too small", c.MTU)
	case c.SrcPortMax != 0 && c.SrcPortMax <= c.SrcPortMin:
		return fmt.Errorf("config: source port range [%d, %d) empty", c.SrcPortMin, c.SrcPortMax)
	}
	return nil
}

// isPlainIPv6 is true for an IPv6 address that is not IPv4-mapped (the maps
// store IPv4 mapped, so a mapped address here would be an IPv4 one in disguise).
func isPlainIPv6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

// ConfigMap is the `config` array (one entry).
type ConfigMap struct{ m *ebpf.Map }

// NewConfigMap wraps an open `config` map.
func NewConfigMap(m *ebpf.Map) *ConfigMap { return &ConfigMap{m: m} }

// ErrNotConfigured is returned by Get before the first Set.
var ErrNotConfigured = errors.New("node not configured")

// Set validates c and stores it. Programs pick it up on their next packet.
func (cm *ConfigMap) Set(c Config) error {
	if c.SrcPortMin == 0 && c.SrcPortMax == 0 {
		c.SrcPortMin, c.SrcPortMax = DefaultSrcPortMin, DefaultSrcPortMax
	}
	if err := c.Validate(); err != nil {
		return err
	}
	ul, _ := optAddrTo16(c.UnderlayIP)
	host, _ := optAddrTo16(c.HostIP)
	ul6, _ := optAddrTo16(c.UnderlayIP6)
	host6, _ := optAddrTo16(c.HostIP6)
	ulMAC, _ := macTo6(c.UnderlayMAC)
	vtep, _ := macTo6(c.VtepMAC)
	val := bpf.WeftNodeConfig{
		UnderlayIfindex: c.UnderlayIfIndex,
		HostIfindex:     c.HostIfIndex,
		UnderlayIp:      ul,
		HostIp:          host,
		UnderlayMac:     ulMAC,
		VtepMac:         vtep,
		Vni:             c.VNI,
		Port:            c.Port,
		Mtu:             c.MTU,
		SrcPortMin:      c.SrcPortMin,
		SrcPortMax:      c.SrcPortMax,
		Flags:           c.Flags,
		Layout:          PinLayout,
		GroIfindex:      c.GROIfIndex,
		GroCellIfindex:  c.GROCellIfIndex,
		UnderlayIp6:     ul6,
		HostIp6:         host6,
	}
	if err := cm.m.Put(uint32(0), &val); err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	return nil
}

// Get returns the stored config, or ErrNotConfigured.
func (cm *ConfigMap) Get() (Config, error) {
	var v bpf.WeftNodeConfig
	if err := cm.m.Lookup(uint32(0), &v); err != nil {
		return Config{}, fmt.Errorf("get config: %w", err)
	}
	if v.UnderlayIfindex == 0 {
		return Config{}, ErrNotConfigured
	}
	return Config{
		UnderlayIfIndex: v.UnderlayIfindex,
		UnderlayIP:      optAddrFrom16(v.UnderlayIp),
		UnderlayMAC:     macFrom6(v.UnderlayMac),
		HostIfIndex:     v.HostIfindex,
		HostIP:          optAddrFrom16(v.HostIp),
		VtepMAC:         macFrom6(v.VtepMac),
		VNI:             v.Vni,
		Port:            v.Port,
		MTU:             v.Mtu,
		SrcPortMin:      v.SrcPortMin,
		SrcPortMax:      v.SrcPortMax,
		Flags:           v.Flags,
		Layout:          v.Layout,
		GROIfIndex:      v.GroIfindex,
		GROCellIfIndex:  v.GroCellIfindex,
		UnderlayIP6:     optAddrFrom16(v.UnderlayIp6),
		HostIP6:         optAddrFrom16(v.HostIp6),
	}, nil
}

// Clear resets the entry to zero: programs then pass everything to the kernel.
func (cm *ConfigMap) Clear() error {
	if err := cm.m.Put(uint32(0), &bpf.WeftNodeConfig{}); err != nil {
		return fmt.Errorf("clear config: %w", err)
	}
	return nil
}
