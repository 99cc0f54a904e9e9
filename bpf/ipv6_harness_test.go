package bpf_test

// The IPv6 half of the harness (issue 14): node A is dual-stack. Its pods
// have an IPv6 address beside their IPv4 one (same veth, same MACs), peer B
// carries IPv6 pods over the IPv4 underlay (v6-in-v4: its lease has an IPv6
// subnet but no PublicIPv6), peer C is a DirectRouting peer on the IPv6
// underlay's L2 (main_test.go gives the namespace its neighbour entry).

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	weftmaps "github.com/weftnet/weft/maps"
)

var (
	hostIP6    = netip.MustParseAddr("fd00:10:244::")  // weft0: the subnet's first address, as flannel-v6.1
	gatewayIP6 = netip.MustParseAddr("fd00:10:244::1") // what pods solicit; no device owns it

	pod1v6 = weftmaps.Endpoint{IP: netip.MustParseAddr("fd00:10:244::2"), IfIndex: pod1.IfIndex, MAC: pod1.MAC, HostMAC: pod1.HostMAC}
	pod2v6 = weftmaps.Endpoint{IP: netip.MustParseAddr("fd00:10:244::3"), IfIndex: pod2.IfIndex, MAC: pod2.MAC, HostMAC: pod2.HostMAC}

	peerB6 = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:1::/64"), Remote: peerB.Remote,
		VtepMAC: peerB.VtepMAC, VNI: 1, Mode: weftmaps.ModeVXLAN}
	peerC6Remote = netip.MustParseAddr("fd00:8::3")
	peerC6       = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"), Remote: peerC6Remote,
		VtepMAC: peerC.VtepMAC, VNI: 1, Mode: weftmaps.ModeDirect}

	remotePodB6 = netip.MustParseAddr("fd00:10:244:1::7")
	remoteSrcB6 = netip.MustParseAddr("fd00:10:244:1::5")
	remotePodC6 = netip.MustParseAddr("fd00:10:244:2::7")
	remoteSrcC6 = netip.MustParseAddr("fd00:10:244:2::5")
)

// pkt6 describes an IPv6 packet.
type pkt6 struct {
	src, dst  netip.Addr
	hopLimit  uint8 // 0 means 64
	zeroHop   bool  // really send hop limit 0
	tc        uint8 // traffic class (DSCP << 2 | ECN)
	flow      uint32
	proto     layers.IPProtocol // TCP (default), UDP or ICMPv6
	sport     uint16
	dport     uint16
	size      int   // total length, IPv6 header included; 0: headers + 32 bytes
	icmpType  uint8 // ICMPv6 type; 0 means echo request
	fragment  bool  // a Fragment extension header before the upper layer
	moreFrags bool
}

// ipv6 serializes p with valid upper-layer checksums.
func ipv6(tb testing.TB, p pkt6) []byte {
	tb.Helper()
	hop := p.hopLimit
	if hop == 0 && !p.zeroHop {
		hop = 64
	}
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}
	ip := &layers.IPv6{Version: 6, TrafficClass: p.tc, FlowLabel: p.flow, HopLimit: hop,
		SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice(), NextHeader: proto}
	ls := []gopacket.SerializableLayer{ip}
	hdr := 40
	if p.fragment {
		ip.NextHeader = layers.IPProtocolIPv6Fragment
		ls = append(ls, &layers.IPv6Fragment{NextHeader: proto, MoreFragments: p.moreFrags, Identification: 0x1234})
		hdr += 8
	}
	sport, dport := p.sport, p.dport
	if sport == 0 {
		sport = 40000
	}
	if dport == 0 {
		dport = 5201
	}
	l4len := 0
	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1, Ack: 1, ACK: true, PSH: true, Window: 512}
		tcp.SetNetworkLayerForChecksum(ip)
		ls, l4len = append(ls, tcp), 20
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		udp.SetNetworkLayerForChecksum(ip)
		ls, l4len = append(ls, udp), 8
	case layers.IPProtocolICMPv6:
		typ := p.icmpType
		if typ == 0 {
			typ = layers.ICMPv6TypeEchoRequest
		}
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
		icmp.SetNetworkLayerForChecksum(ip)
		// The echo identifier and sequence (or an error's unused word) as payload.
		ls, l4len = append(ls, icmp, gopacket.Payload([]byte{byte(sport >> 8), byte(sport), 0, 1})), 8
	default:
		tb.Fatalf("no L4 builder for %v", proto)
	}
	payloadLen := 32
	if p.size > 0 {
		payloadLen = p.size - hdr - l4len
		if payloadLen < 0 {
			tb.Fatalf("packet size %d too small", p.size)
		}
	}
	payload := make([]byte, payloadLen)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	return serialize(tb, append(ls, gopacket.Payload(payload))...)
}

// podFrame6 is what a pod sends to its gateway.
func podFrame6(tb testing.TB, from weftmaps.Endpoint, p pkt6) []byte {
	if !p.src.IsValid() {
		p.src = from.IP
	}
	return ether(tb, from.HostMAC, from.MAC, layers.EthernetTypeIPv6, ipv6(tb, p))
}

// hostFrame6 is what the host stack sends out of weft0.
func hostFrame6(tb testing.TB, p pkt6) []byte {
	if !p.src.IsValid() {
		p.src = hostIP6
	}
	return ether(tb, mustMAC("ee:ee:ee:ee:ee:ee"), localVtep, layers.EthernetTypeIPv6, ipv6(tb, p))
}

// innerFromB6 is an IPv6 packet from a pod on peer B.
func innerFromB6(tb testing.TB, p pkt6) []byte {
	if !p.src.IsValid() {
		p.src = remoteSrcB6
	}
	if !p.dst.IsValid() {
		p.dst = pod2v6.IP
	}
	return ipv6(tb, p)
}

// validVX6in4 is peer B's VXLAN frame (IPv4 underlay) carrying an IPv6 packet.
func validVX6in4(tb testing.TB, p pkt6) []byte {
	v := defaultVX(innerFromB6(tb, p))
	v.innerType = layers.EthernetTypeIPv6
	return vxlanFrame(tb, v)
}

// hopDecremented returns the IPv6 packet with hop limit - 1 (IPv6 has no header checksum).
func hopDecremented(ip []byte) []byte {
	out := append([]byte(nil), ip...)
	out[7]--
	return out
}

// ipv6ECN is the ECN field of an IPv6 header's traffic class.
func ipv6ECN(h []byte) byte { return (h[1] >> 4) & 3 }

// icmp6Checksum is the ICMPv6 checksum (RFC 8200 8.1) of msg between src and dst; 0 when msg carries a right one.
func icmp6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	ph := make([]byte, 0, 40+len(msg))
	s, d := src.As16(), dst.As16()
	ph = append(ph, s[:]...)
	ph = append(ph, d[:]...)
	ph = binary.BigEndian.AppendUint32(ph, uint32(len(msg)))
	ph = append(ph, 0, 0, 0, 58)
	return csum16(append(ph, msg...))
}

// ndFrame builds a Neighbour Solicitation (or Advertisement) with gopacket,
// checksum right unless mutated afterwards.
type nd struct {
	ethSrc, ethDst net.HardwareAddr
	src, dst       netip.Addr
	hopLimit       uint8 // 0: 255
	advert         bool
	target         netip.Addr
	lladdr         net.HardwareAddr // SLLA (NS) or TLLA (NA) option; nil: none
	flags          uint8            // NA flags
}

func ndFrame(tb testing.TB, n nd) []byte {
	tb.Helper()
	hop := n.hopLimit
	if hop == 0 {
		hop = 255
	}
	ip := &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: layers.IPProtocolICMPv6, SrcIP: n.src.AsSlice(), DstIP: n.dst.AsSlice()}
	var body gopacket.SerializableLayer
	icmp := &layers.ICMPv6{}
	icmp.SetNetworkLayerForChecksum(ip)
	if n.advert {
		icmp.TypeCode = layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborAdvertisement, 0)
		na := &layers.ICMPv6NeighborAdvertisement{Flags: n.flags, TargetAddress: n.target.AsSlice()}
		if n.lladdr != nil {
			na.Options = layers.ICMPv6Options{{Type: layers.ICMPv6OptTargetAddress, Data: n.lladdr}}
		}
		body = na
	} else {
		icmp.TypeCode = layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)
		ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: n.target.AsSlice()}
		if n.lladdr != nil {
			ns.Options = layers.ICMPv6Options{{Type: layers.ICMPv6OptSourceAddress, Data: n.lladdr}}
		}
		body = ns
	}
	return serialize(tb, &layers.Ethernet{DstMAC: n.ethDst, SrcMAC: n.ethSrc, EthernetType: layers.EthernetTypeIPv6}, ip, icmp, body)
}

// solicitedNode is the solicited-node multicast group of a (RFC 4291 2.7.1) and its Ethernet address.
func solicitedNode(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	b := a.As16()
	g := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	gb := g.As16()
	return g, net.HardwareAddr{0x33, 0x33, gb[12], gb[13], gb[14], gb[15]}
}
