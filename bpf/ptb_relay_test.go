package bpf_test

// ptb_relay.h: a router's Packet Too Big about our outer IPv6 VXLAN packet,
// relayed to the inner IPv6 sender.

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

var (
	routerIP6 = netip.MustParseAddr("fd00:8::fe") // a router on the way to peer E
	routerMAC = mustMAC("02:00:00:00:08:fe")
)

// routerPTB is the router's Packet Too Big about sent (a frame node A put
// on the underlay), quoting as much of it as fits in 1280 bytes, or quote
// bytes where quote > 0; checksum right, then mutate (if any) applied.
func routerPTB(t testing.TB, sent []byte, mtu uint32, quote int, mutate func(b []byte)) []byte {
	t.Helper()
	q := sent[14:]
	if n := 1280 - 40 - 8; len(q) > n {
		q = q[:n]
	}
	if quote > 0 {
		q = q[:quote]
	}
	msg := binary.BigEndian.AppendUint32([]byte{2, 0, 0, 0}, mtu)
	msg = append(msg, q...)
	if mutate != nil {
		mutate(msg)
	}
	binary.BigEndian.PutUint16(msg[2:], icmp6Checksum(routerIP6, underlayIP6, msg))
	ip := make([]byte, 40, 40+len(msg))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(msg)))
	ip[6], ip[7] = 58, 255
	s, d := routerIP6.As16(), underlayIP6.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return ether(t, underlayMAC, routerMAC, layers.EthernetTypeIPv6, append(ip, msg...))
}

func TestRelayUnderlayPTB(t *testing.T) {
	e := newEnv6(t)
	sent := e.run("from_pod", podFrame6(t, pod1v6, pkt6{dst: remotePodE6, size: 1430}))
	sent.check(t, tcActRedirect, counters("encap"))
	sentHost := e.run("from_host", hostFrame6(t, pkt6{dst: remotePodE6, size: 1430}))
	sentHost.check(t, tcActRedirect, counters("encap_host"))

	// The relayed message: from the router to the inner sender, the MTU
	// less our 70 bytes, quoting the inner header and the 8 bytes after it.
	check := func(t *testing.T, out, sent []byte, to netip.Addr, hop byte, mtu uint32) {
		t.Helper()
		if len(out) != 14+40+8+48 {
			t.Fatalf("relayed %d bytes, want %d:\n%x", len(out), 14+40+8+48, out)
		}
		ip, msg := out[14:54], out[54:]
		src, _ := netip.AddrFromSlice(ip[8:24])
		dst, _ := netip.AddrFromSlice(ip[24:40])
		if ip[0] != 0x60 || ip[1] != 0 || ip[2] != 0 || ip[3] != 0 || be16(ip[4:]) != 56 || ip[6] != 58 || ip[7] != hop ||
			src != routerIP6 || dst != to {
			t.Errorf("IPv6 header %x: want version 6, no class or flow, payload 56, ICMPv6, hop limit %d, %v -> %v",
				ip, hop, routerIP6, to)
		}
		if msg[0] != 2 || msg[1] != 0 || binary.BigEndian.Uint32(msg[4:]) != mtu {
			t.Errorf("ICMPv6 type %d code %d MTU %d, want Packet Too Big (2, 0), MTU %d", msg[0], msg[1], binary.BigEndian.Uint32(msg[4:]), mtu)
		}
		if c := icmp6Checksum(src, dst, msg); c != 0 {
			t.Errorf("ICMPv6 checksum wrong (residue %#04x)", c)
		}
		if want := sent[off6InnerIP : off6InnerIP+48]; !bytes.Equal(msg[8:], want) {
			t.Errorf("quote\n%x\nwant the inner packet's first 48 bytes\n%x", msg[8:], want)
		}
	}

	t.Run("to the pod", func(t *testing.T) {
		r := e.run("from_underlay", routerPTB(t, sent.out, 1400, 0, nil))
		r.check(t, tcActRedirect, counters("ptb_relayed"))
		if !bytes.Equal(r.out[0:6], pod1.MAC) || !bytes.Equal(r.out[6:12], pod1.HostMAC) || be16(r.out[12:]) != 0x86dd {
			t.Errorf("Ethernet %x, want %v <- %v, IPv6", r.out[:14], pod1.MAC, pod1.HostMAC)
		}
		check(t, r.out, sent.out, pod1v6.IP, 63, 1400-70)
	})
	t.Run("the smallest quote that will do", func(t *testing.T) {
		r := e.run("from_underlay", routerPTB(t, sent.out, 1400, 40+8+8+14+40+8, nil))
		r.check(t, tcActRedirect, counters("ptb_relayed"))
		check(t, r.out, sent.out, pod1v6.IP, 63, 1400-70)
	})
	t.Run("a pod's path MTU stays at least 1280", func(t *testing.T) {
		r := e.run("from_underlay", routerPTB(t, sent.out, 1300, 0, nil))
		r.check(t, tcActRedirect, counters("ptb_relayed"))
		check(t, r.out, sent.out, pod1v6.IP, 63, 1280)
	})
	t.Run("to the host", func(t *testing.T) {
		r := e.run("from_underlay", routerPTB(t, sentHost.out, 1400, 0, nil))
		r.check(t, tcActRedirect, counters("ptb_relayed"))
		if !bytes.Equal(r.out[0:6], localVtep) {
			t.Errorf("Ethernet destination %x, want weft0's %v", r.out[0:6], localVtep)
		}
		check(t, r.out, sentHost.out, hostIP6, 64, 1400-70)
	})

	// What is not such a message, or not ours to relay, goes to the kernel untouched.
	sent4 := e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodE, size: 1430}))
	sent4.check(t, tcActRedirect, counters("encap"))
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"to another address", func() []byte {
			b := routerPTB(t, sent.out, 1400, 0, nil)
			b[14+24+15] ^= 0x40
			return b
		}()},
		{"destination unreachable", routerPTB(t, sent.out, 1400, 0, func(m []byte) { m[0] = 1 })},
		{"code not 0", routerPTB(t, sent.out, 1400, 0, func(m []byte) { m[1] = 1 })},
		{"quoting UDP to another port", routerPTB(t, sent.out, 1400, 0, func(m []byte) { m[8+40+3] ^= 1 })},
		{"quoting a packet from another node", routerPTB(t, sent.out, 1400, 0, func(m []byte) { m[8+8+15] ^= 1 })},
		{"quoting VXLAN without the I flag", routerPTB(t, sent.out, 1400, 0, func(m []byte) { m[8+48] = 0 })},
		{"quoting an inner IPv4 packet (v4-in-v6)", routerPTB(t, sent4.out, 1400, 0, nil)},
		{"quoting a sender that is not ours", routerPTB(t, sent.out, 1400, 0, func(m []byte) { m[8+70+8+15] ^= 0x10 })},
		{"an MTU that is no news", routerPTB(t, sent.out, 1500, 0, nil)},
		{"a quote too short", routerPTB(t, sent.out, 1400, 40+8+8+14+40+7, nil)},
	} {
		t.Run("not relayed: "+c.name, func(t *testing.T) {
			r := e.run("from_underlay", c.frame)
			r.check(t, tcActOK, counters("pass_underlay"))
			if !bytes.Equal(r.out, c.frame) {
				t.Errorf("frame changed")
			}
		})
	}
	t.Run("not relayed: no IPv6 underlay address", func(t *testing.T) {
		e := newEnv6(t)
		cfg := e.cfg
		cfg.UnderlayIP6 = netip.Addr{}
		e.setConfig(cfg)
		e.run("from_underlay", routerPTB(t, sent.out, 1400, 0, nil)).check(t, tcActOK, counters("pass_underlay"))
	})
}
