package bpf_test

// Shared harness for the layer-1 tests: every program is run with
// BPF_PROG_TEST_RUN (Program.Run) on frames built here with gopacket,
// independently of the C. Each test loads its own unpinned copy of the
// objects, so tests cannot see each other's map contents or counters.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/weftnet/weft/bpf"
	weftmaps "github.com/weftnet/weft/maps"
)

func init() {
	// flannel's port; gopacket only knows IANA's 4789.
	layers.RegisterUDPPortLayerType(layers.UDPPort(8472), layers.LayerTypeVXLAN)
}

// Verdicts (linux/pkt_cls.h, linux/bpf.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7

	xdpDrop = 1
	xdpPass = 2
)

// Every verdict each program is documented to return.
var verdictSets = map[string][]uint32{
	"from_pod":          {tcActOK, tcActShot, tcActRedirect},
	"from_host":         {tcActOK, tcActShot, tcActRedirect},
	"from_underlay":     {tcActOK, tcActShot, tcActRedirect},
	"from_underlay_xdp": {xdpDrop, xdpPass},
	"gro_sink":          {tcActShot},
}

// XDP -> tc metadata tags (weft.h), as they sit in memory (little endian host).
const (
	metaDecapped = 0x57454644
	metaPassed   = 0x57454650
)

// The node under test (A) and its neighbours.
var (
	underlayIP  = netip.MustParseAddr("192.168.8.1")
	underlayMAC = mustMAC("02:00:00:00:08:01")
	localVtep   = mustMAC("8e:00:00:00:00:01")
	hostIP      = netip.MustParseAddr("10.244.0.0") // weft0, as flannel numbers its device
	gatewayIP   = netip.MustParseAddr("10.244.0.1") // what pods ARP for

	underlayIfIndex = uint32(2)
	hostIfIndex     = uint32(3)

	// Pod 1 sits behind ifindex 1: Program.Run runs skbs on loopback, so
	// this is the only pod whose ARP from_pod can answer.
	pod1 = weftmaps.Endpoint{IP: netip.MustParseAddr("10.244.0.2"), IfIndex: 1,
		MAC: mustMAC("0a:58:0a:f4:00:02"), HostMAC: mustMAC("ee:00:00:00:00:02")}
	pod2 = weftmaps.Endpoint{IP: netip.MustParseAddr("10.244.0.3"), IfIndex: 7,
		MAC: mustMAC("0a:58:0a:f4:00:03"), HostMAC: mustMAC("ee:00:00:00:00:03")}

	// Peer B: VXLAN. Peer C: DirectRouting. Peer D: VXLAN with its own VNI.
	peerB = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Remote: netip.MustParseAddr("192.168.8.2"),
		VtepMAC: mustMAC("8e:00:00:00:00:02"), VNI: 1, Mode: weftmaps.ModeVXLAN}
	peerC = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Remote: netip.MustParseAddr("192.168.8.3"),
		VtepMAC: mustMAC("8e:00:00:00:00:03"), VNI: 1, Mode: weftmaps.ModeDirect}
	peerD = weftmaps.Tunnel{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Remote: netip.MustParseAddr("192.168.8.4"),
		VtepMAC: mustMAC("8e:00:00:00:00:04"), VNI: 0x123456, Mode: weftmaps.ModeVXLAN}

	peerBMAC = mustMAC("02:00:00:00:08:02") // peer B's underlay NIC
	peerCMAC = mustMAC("02:00:00:00:08:03")

	remotePodB = netip.MustParseAddr("10.244.1.7")
	remotePodC = netip.MustParseAddr("10.244.2.7")
	remotePodD = netip.MustParseAddr("10.244.3.7")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func defaultConfig() weftmaps.Config {
	return weftmaps.Config{
		UnderlayIfIndex: underlayIfIndex,
		UnderlayIP:      underlayIP,
		UnderlayMAC:     underlayMAC,
		HostIfIndex:     hostIfIndex,
		HostIP:          hostIP,
		VtepMAC:         localVtep,
		VNI:             1,
		Port:            8472,
		MTU:             1500,
		SrcPortMin:      weftmaps.DefaultSrcPortMin,
		SrcPortMax:      weftmaps.DefaultSrcPortMax,
		HostIP6:         hostIP6,
	}
}

// loadObjects loads the collection without pinning: the maps carry
// LIBBPF_PIN_BY_NAME, which LoadWeftObjects(&objs, nil) refuses without a
// PinPath, so the pinning is cleared on the spec.
func loadObjects(tb testing.TB) *bpf.WeftObjects {
	tb.Helper()
	spec, err := bpf.LoadWeft()
	if err != nil {
		tb.Fatalf("load spec: %v", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	var objs bpf.WeftObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		tb.Fatalf("load objects: %+v", err)
	}
	tb.Cleanup(func() { objs.Close() })
	return &objs
}

type env struct {
	tb   testing.TB
	objs *bpf.WeftObjects
	m    *weftmaps.Set
	cfg  weftmaps.Config
}

// newBareEnv loads the objects and leaves every map empty.
func newBareEnv(tb testing.TB) *env {
	objs := loadObjects(tb)
	return &env{tb: tb, objs: objs, m: weftmaps.FromMaps(&objs.WeftMaps)}
}

// newEnv is node A: default config, two local pods, peers B, C and D.
func newEnv(tb testing.TB) *env {
	e := newBareEnv(tb)
	e.setConfig(defaultConfig())
	// Dual-stack: each pod also has an IPv6 entry, peers B and C an IPv6 subnet (ipv6_harness_test.go).
	for _, ep := range []weftmaps.Endpoint{pod1, pod2, pod1v6, pod2v6} {
		if err := e.m.Endpoints.Put(ep); err != nil {
			tb.Fatal(err)
		}
	}
	for _, tun := range []weftmaps.Tunnel{peerB, peerC, peerD, peerB6, peerC6} {
		if err := e.m.Tunnels.Put(tun); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

func (e *env) setConfig(c weftmaps.Config) {
	e.tb.Helper()
	if err := e.m.Config.Set(c); err != nil {
		e.tb.Fatalf("set config: %v", err)
	}
	e.cfg = c
}

func (e *env) prog(name string) *ebpf.Program {
	switch name {
	case "from_pod":
		return e.objs.FromPod
	case "from_host":
		return e.objs.FromHost
	case "from_underlay":
		return e.objs.FromUnderlay
	case "from_underlay_xdp":
		return e.objs.FromUnderlayXdp
	case "gro_sink":
		return e.objs.GroSink
	case "from_gro_cell":
		return e.objs.FromGroCell
	}
	e.tb.Fatalf("no program %q", name)
	return nil
}

func (e *env) snapshot() map[string]uint64 {
	e.tb.Helper()
	s, err := e.m.Stats.Snapshot()
	if err != nil {
		e.tb.Fatalf("read counters: %v", err)
	}
	return s
}

// result is one Program.Run.
type result struct {
	verdict uint32
	out     []byte            // the frame after the program (XDP: without metadata)
	meta    []byte            // XDP metadata in front of the frame, if any
	delta   map[string]uint64 // counters that moved, by how many packets
}

// xdpMD mirrors struct xdp_md; the kernel reports data and data_end as
// offsets from data_meta.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// skbCtx is struct __sk_buff as raw words; Program.Run accepts only a few
// of its fields (see convert___skb_to_skb), named by their offsets here.
type skbCtx [192 / 4]uint32

const (
	skbWordIfindex = 40 / 4
	skbWordGSOSegs = 164 / 4
	skbWordGSOSize = 176 / 4
)

type runOpt func(*ebpf.RunOptions)

// withGSO marks the skb as GSO with the given segment size. Program.Run can
// set gso_size but not gso_type, so this only reaches the MTU logic.
func withGSO(size, segs uint32) runOpt {
	return func(o *ebpf.RunOptions) {
		var c skbCtx
		c[skbWordGSOSize] = size
		c[skbWordGSOSegs] = segs
		o.Context = c
	}
}

func (e *env) run(name string, frame []byte, opts ...runOpt) result {
	e.tb.Helper()
	r, err := e.tryRun(name, frame, opts...)
	if err != nil {
		e.tb.Fatalf("run %s: %v", name, err)
	}
	return r
}

func (e *env) tryRun(name string, frame []byte, opts ...runOpt) (result, error) {
	prog := e.prog(name)
	o := &ebpf.RunOptions{
		Data:    slices.Clone(frame),
		DataOut: make([]byte, len(frame)+256),
	}
	var mdOut xdpMD
	xdp := prog.Type() == ebpf.XDP
	if xdp {
		o.Context = xdpMD{DataEnd: uint32(len(frame))}
		o.ContextOut = &mdOut
	}
	for _, opt := range opts {
		opt(o)
	}
	before := e.snapshot()
	ret, err := prog.Run(o)
	if err != nil {
		return result{}, err
	}
	r := result{verdict: ret, out: o.DataOut, delta: counterDelta(before, e.snapshot())}
	if xdp {
		if int(mdOut.Data) > len(r.out) {
			return r, fmt.Errorf("xdp_md data offset %d beyond output of %d bytes", mdOut.Data, len(r.out))
		}
		r.meta, r.out = r.out[:mdOut.Data], r.out[mdOut.Data:]
	}
	return r, nil
}

func counterDelta(before, after map[string]uint64) map[string]uint64 {
	d := map[string]uint64{}
	for name, v := range after {
		if v != before[name] {
			d[name] = v - before[name]
		}
	}
	return d
}

// counters builds the expected delta: each named counter moved by one.
func counters(names ...string) map[string]uint64 {
	d := map[string]uint64{}
	for _, n := range names {
		d[n]++
	}
	return d
}

func (r result) check(tb testing.TB, verdict uint32, want map[string]uint64) {
	tb.Helper()
	if r.verdict != verdict {
		tb.Errorf("verdict %d, want %d", r.verdict, verdict)
	}
	if !maps.Equal(r.delta, want) {
		tb.Errorf("counters moved %v, want exactly %v", r.delta, want)
	}
}

func (r result) checkUnchanged(tb testing.TB, in []byte) {
	tb.Helper()
	if !bytes.Equal(r.out, in) {
		tb.Errorf("frame changed:\n got %x\nwant %x", r.out, in)
	}
}

// ---- frames, built with gopacket ----

var serOpts = gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}

func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serOpts, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return slices.Clone(buf.Bytes())
}

// pkt describes an IPv4 packet.
type pkt struct {
	src, dst netip.Addr
	ttl      uint8 // 0 means 64
	zeroTTL  bool  // really send TTL 0
	tos      uint8
	df       bool
	proto    layers.IPProtocol // TCP (default), UDP or ICMPv4
	sport    uint16
	dport    uint16
	size     int // total IPv4 length; 0: headers + 32 bytes
	id       uint16
	mf       bool   // more fragments
	fragOff  uint16 // fragment offset, in 8-byte units
	icmpType uint8  // ICMPv4 type; 0 means echo request
}

// ipv4 serializes p (IPv4 header + L4 header + payload, with valid checksums).
func ipv4(tb testing.TB, p pkt) []byte {
	tb.Helper()
	ttl := p.ttl
	if ttl == 0 && !p.zeroTTL {
		ttl = 64
	}
	ip := &layers.IPv4{Version: 4, TTL: ttl, TOS: p.tos, Id: p.id, SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice()}
	if p.df {
		ip.Flags = layers.IPv4DontFragment
	}
	if p.mf {
		ip.Flags |= layers.IPv4MoreFragments
	}
	ip.FragOffset = p.fragOff
	if p.id == 0 {
		ip.Id = 0x1234
	}
	proto := p.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}
	ip.Protocol = proto
	sport, dport := p.sport, p.dport
	if sport == 0 {
		sport = 40000
	}
	if dport == 0 {
		dport = 5201
	}
	var l4 gopacket.SerializableLayer
	l4len := 0
	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1, Ack: 1, ACK: true, PSH: true, Window: 512}
		tcp.SetNetworkLayerForChecksum(ip)
		l4, l4len = tcp, 20
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		udp.SetNetworkLayerForChecksum(ip)
		l4, l4len = udp, 8
	case layers.IPProtocolICMPv4:
		typ := p.icmpType
		if typ == 0 {
			typ = layers.ICMPv4TypeEchoRequest
		}
		l4, l4len = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: sport, Seq: 1}, 8
	case layers.IPProtocolSCTP:
		// Only the common header's ports matter here.
		l4, l4len = gopacket.Payload([]byte{byte(sport >> 8), byte(sport), byte(dport >> 8), byte(dport), 0, 0, 0, 1, 0, 0, 0, 0}), 12
	default:
		tb.Fatalf("no L4 builder for %v", proto)
	}
	payloadLen := 32
	if p.size > 0 {
		payloadLen = p.size - 20 - l4len
		if payloadLen < 0 {
			tb.Fatalf("packet size %d too small", p.size)
		}
	}
	payload := make([]byte, payloadLen)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	return serialize(tb, ip, l4, gopacket.Payload(payload))
}

func ether(tb testing.TB, dst, src net.HardwareAddr, etype layers.EthernetType, payload []byte) []byte {
	tb.Helper()
	return serialize(tb, &layers.Ethernet{DstMAC: dst, SrcMAC: src, EthernetType: etype}, gopacket.Payload(payload))
}

// podFrame is what a pod sends to its gateway.
func podFrame(tb testing.TB, from weftmaps.Endpoint, p pkt) []byte {
	if !p.src.IsValid() {
		p.src = from.IP
	}
	return ether(tb, from.HostMAC, from.MAC, layers.EthernetTypeIPv4, ipv4(tb, p))
}

// vx describes a VXLAN frame on the underlay, as a kernel vxlan device or a
// Weft peer sends it.
type vx struct {
	outerSrc, outerDst netip.Addr
	srcMAC             net.HardwareAddr
	sport, dport       uint16
	vni                uint32
	innerSrcMAC        net.HardwareAddr
	innerDstMAC        net.HardwareAddr
	innerType          layers.EthernetType
	inner              []byte // the inner Ethernet payload (an IPv4 packet)
	udpCsum            bool   // send a real UDP checksum instead of zero
}

// defaultVX is peer B sending `inner` to us.
func defaultVX(inner []byte) vx {
	return vx{
		outerSrc: peerB.Remote, outerDst: underlayIP, srcMAC: peerBMAC,
		sport: 43210, dport: 8472, vni: 1,
		innerSrcMAC: peerB.VtepMAC, innerDstMAC: localVtep, innerType: layers.EthernetTypeIPv4,
		inner: inner,
	}
}

func vxlanFrame(tb testing.TB, v vx) []byte {
	tb.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Id: 0x4242, Protocol: layers.IPProtocolUDP,
		SrcIP: v.outerSrc.AsSlice(), DstIP: v.outerDst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(v.sport), DstPort: layers.UDPPort(v.dport)}
	udp.SetNetworkLayerForChecksum(ip)
	b := serialize(tb,
		&layers.Ethernet{DstMAC: underlayMAC, SrcMAC: v.srcMAC, EthernetType: layers.EthernetTypeIPv4},
		ip, udp,
		&layers.VXLAN{ValidIDFlag: true, VNI: v.vni},
		&layers.Ethernet{DstMAC: v.innerDstMAC, SrcMAC: v.innerSrcMAC, EthernetType: v.innerType},
		gopacket.Payload(v.inner))
	if !v.udpCsum {
		b[offUDP+6], b[offUDP+7] = 0, 0
	}
	return b
}

// Offsets in a VXLAN frame without outer IP options.
const (
	offOuterIP  = 14
	offUDP      = offOuterIP + 20
	offVXLAN    = offUDP + 8
	offInnerEth = offVXLAN + 8
	offInnerIP  = offInnerEth + 14
)

// ---- byte-level helpers ----

// csum16 is the Internet checksum (RFC 1071) of b.
func csum16(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// setIPv4Csum recomputes the header checksum of the IPv4 header at b.
func setIPv4Csum(b []byte) {
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || ihl > len(b) {
		ihl = 20
	}
	b[10], b[11] = 0, 0
	binary.BigEndian.PutUint16(b[10:], csum16(b[:ihl]))
}

func ipv4CsumValid(h []byte) bool { return csum16(h) == 0 }

// decremented returns the IPv4 packet with TTL - 1 and its checksum redone
// from scratch (not incrementally), to compare a forwarded packet against.
func decremented(tb testing.TB, ip []byte) []byte {
	tb.Helper()
	out := slices.Clone(ip)
	out[8]--
	setIPv4Csum(out)
	return out
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

func put16(b []byte, v uint16) { binary.BigEndian.PutUint16(b, v) }

func hexDiff(tb testing.TB, what string, got, want []byte) {
	tb.Helper()
	if bytes.Equal(got, want) {
		return
	}
	n := min(len(got), len(want))
	first := n
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			first = i
			break
		}
	}
	lo := max(0, first-16)
	window := func(b []byte) []byte { return b[min(lo, len(b)):min(lo+96, len(b))] }
	tb.Errorf("%s differs (len %d, want %d; first difference at byte %d); from byte %d:\n got %x\nwant %x",
		what, len(got), len(want), first, lo, window(got), window(want))
}

// ethHdr is a bare 14-byte Ethernet header (gopacket pads short frames to 60 bytes).
func ethHdr(dst, src net.HardwareAddr, etype layers.EthernetType) []byte {
	b := make([]byte, 14, 2048)
	copy(b, dst)
	copy(b[6:], src)
	put16(b[12:], uint16(etype))
	return b
}

// tcRunnable says whether Program.Run accepts frame for a tc program: it
// refuses IPv4 frames shorter than Ethernet + 20 bytes and IPv6 frames
// shorter than Ethernet + 40 (XDP takes anything from 14 bytes).
func tcRunnable(frame []byte) bool {
	if len(frame) < 14 {
		return false
	}
	switch be16(frame[12:]) {
	case 0x0800:
		return len(frame) >= 14+20
	case 0x86dd:
		return len(frame) >= 14+40
	}
	return true
}
