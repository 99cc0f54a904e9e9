package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// Pods are untrusted (antispoof.h): a pod may send only with its own
// address, whatever the destination, and ARP only as itself. Program.Run
// runs skbs on loopback, ifindex 1, which is pod1's veth here; pod2's
// endpoint is on ifindex 7, so a frame with pod2's address arriving here is
// a same-node spoof.
func TestFromPodSpoofedSource(t *testing.T) {
	for _, c := range []struct {
		name string
		src  netip.Addr
	}{
		{"another pod on this node", pod2.IP},
		{"a pod on another node", remotePodB},
		{"a DirectRouting peer's pod", remotePodC},
		{"a free address in our subnet", netip.MustParseAddr("10.244.0.99")},
		{"the gateway", gatewayIP},
		{"weft0's address", hostIP},
		{"the node's underlay address", underlayIP},
		{"outside the cluster network", netip.MustParseAddr("8.8.8.8")},
		{"0.0.0.0", netip.IPv4Unspecified()},
	} {
		for _, dst := range []struct {
			name string
			ip   netip.Addr
		}{
			{"to a local pod", pod2.IP},
			{"to the sender's own address", pod1.IP},
			{"to a VXLAN peer", remotePodB},
			{"to a DirectRouting peer", remotePodC},
			{"to the outside", netip.MustParseAddr("1.1.1.1")},
		} {
			t.Run(c.name+" "+dst.name, func(t *testing.T) {
				e := newEnv(t)
				r := e.run("from_pod", podFrame(t, pod1, pkt{src: c.src, dst: dst.ip, proto: layers.IPProtocolUDP}))
				r.check(t, tcActShot, counters("drop_pod_spoof"))
			})
		}
	}

	// The check comes before any other verdict: a spoofed packet is not
	// forwarded to the kernel either, malformed or not.
	t.Run("spoofed and malformed", func(t *testing.T) {
		e := newEnv(t)
		in := mutateIP(podFrame(t, pod1, pkt{src: pod2.IP, dst: remotePodB}), func(h []byte) { put16(h[2:], 0xffff) })
		e.run("from_pod", in).check(t, tcActShot, counters("drop_pod_spoof"))
	})
	// A pod with no endpoint entry at all (being torn down) sends nothing.
	t.Run("endpoint removed", func(t *testing.T) {
		e := newEnv(t)
		if err := e.m.Endpoints.Delete(pod1.IP); err != nil {
			t.Fatal(err)
		}
		e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodB})).check(t, tcActShot, counters("drop_pod_spoof"))
	})
}

func TestFromPodARPSpoof(t *testing.T) {
	bcast := mustMAC("ff:ff:ff:ff:ff:ff")
	zero := mustMAC("00:00:00:00:00:00")
	other := mustMAC("0a:58:0a:f4:00:63")

	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"unknown sender address", arpFrame(t, bcast, other, layers.ARPRequest, other, netip.MustParseAddr("10.244.0.99"), zero, gatewayIP)},
		{"another local pod's address and MAC", arpFrame(t, bcast, pod2.MAC, layers.ARPRequest, pod2.MAC, pod2.IP, zero, gatewayIP)},
		{"another local pod's address, own MAC", arpFrame(t, bcast, pod1.MAC, layers.ARPRequest, pod1.MAC, pod2.IP, zero, gatewayIP)},
		{"a remote pod's address", arpFrame(t, bcast, pod1.MAC, layers.ARPRequest, pod1.MAC, remotePodB, zero, gatewayIP)},
		{"the gateway's address", arpFrame(t, bcast, pod1.MAC, layers.ARPRequest, pod1.MAC, gatewayIP, zero, pod2.IP)},
		{"own address, another MAC as sender", arpFrame(t, bcast, pod1.MAC, layers.ARPRequest, other, pod1.IP, zero, gatewayIP)},
		{"own address and MAC, another Ethernet source", arpFrame(t, bcast, other, layers.ARPRequest, pod1.MAC, pod1.IP, zero, gatewayIP)},
		{"gratuitous for another pod", arpFrame(t, bcast, pod1.MAC, layers.ARPRequest, pod1.MAC, pod2.IP, zero, pod2.IP)},
		{"reply claiming another pod", arpFrame(t, pod1.HostMAC, pod1.MAC, layers.ARPReply, pod1.MAC, pod2.IP, pod1.HostMAC, gatewayIP)},
		{"reply claiming the gateway", arpFrame(t, pod1.HostMAC, pod1.MAC, layers.ARPReply, pod1.MAC, gatewayIP, pod1.HostMAC, pod2.IP)},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.run("from_pod", c.frame).check(t, tcActShot, counters("drop_arp_spoof"))
		})
	}
}

// ctgate.h: what conntrack must see leaves the fast path from a pod. (The
// test's namespace has no NAT, so every TCP/UDP flow is a conntrack miss
// and keeps the fast path; NATed flows are the netns tests' job.)
func TestFromPodConntrackGate(t *testing.T) {
	for _, c := range []struct {
		name string
		p    pkt
		want string
	}{
		{"TCP to a local pod", pkt{dst: pod2.IP}, "local"},
		{"UDP to a VXLAN peer", pkt{dst: remotePodB, proto: layers.IPProtocolUDP}, "encap"},
		{"ICMP echo to a VXLAN peer", pkt{dst: remotePodB, proto: layers.IPProtocolICMPv4}, "encap"},
		{"first fragment to a local pod", pkt{dst: pod2.IP, mf: true}, "pass_conntrack"},
		{"later fragment to a VXLAN peer", pkt{dst: remotePodB, fragOff: 100}, "pass_conntrack"},
		{"fragment to a DirectRouting peer", pkt{dst: remotePodC, proto: layers.IPProtocolUDP, mf: true}, "pass_conntrack"},
		{"ICMP port unreachable to a VXLAN peer", pkt{dst: remotePodB, proto: layers.IPProtocolICMPv4, icmpType: layers.ICMPv4TypeDestinationUnreachable}, "pass_conntrack"},
		{"ICMP time exceeded to a local pod", pkt{dst: pod2.IP, proto: layers.IPProtocolICMPv4, icmpType: layers.ICMPv4TypeTimeExceeded}, "pass_conntrack"},
		{"SCTP to a VXLAN peer", pkt{dst: remotePodB, proto: layers.IPProtocolSCTP}, "pass_conntrack"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			in := podFrame(t, pod1, c.p)
			r := e.run("from_pod", in)
			switch c.want {
			case "pass_conntrack":
				r.check(t, tcActOK, counters(c.want))
				r.checkUnchanged(t, in)
			default:
				r.check(t, tcActRedirect, counters(c.want))
			}
		})
	}
}
