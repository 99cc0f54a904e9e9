package test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// TestWeftdIPv6ControlPlane: the real weftd on a dual-stack network and a
// dual-stack underlay, against a real etcd, checked on what the control
// plane owes the data plane (ipv6-contract.md) without sending a packet:
//
//   - its lease: flannel's dual key and value, PublicIPv6 the underlay's
//     IPv6 address, BackendV6Data with the same VtepMAC as BackendData;
//   - subnet.env with FLANNEL_IPV6_* and the pod MTU of IPv6 over an IPv6
//     underlay (underlay - 70);
//   - node_config's underlay_ip6 and host_ip6, weft0's /128 and IPv6
//     cluster route;
//   - tunnels for peers' IPv6 halves: to PublicIPv6 with BackendV6Data's
//     VtepMAC (a flannel lease), and v6-in-v4 to PublicIP with
//     BackendData's (a lease without PublicIPv6), removed with the lease;
//   - weftctl tunnels lists them.
func TestWeftdIPv6ControlPlane(t *testing.T) {
	c := startLab(t, lab.Options{Network6: netip.MustParsePrefix("fd00:10:244::/48"), UnderlayCIDR6: netip.MustParsePrefix("fd77::/64")})
	n := mustAddWeftNode(t, c, "n1")
	cli := etcdClient(t, c)
	if !n.Subnet.IsValid() || !n.Subnet6.IsValid() {
		t.Fatalf("subnets %v %v, want one per family", n.Subnet, n.Subnet6)
	}

	// The lease, byte for byte as a dual-stack flannel node writes it.
	key := fmt.Sprintf("%s/subnets/%s-%d&%s-%d", c.EtcdPrefix, n.Subnet.Addr(), n.Subnet.Bits(), n.Subnet6.Addr(), n.Subnet6.Bits())
	resp, err := cli.Get(testCtx(t, 5*time.Second), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("lease %s: %v %v", key, resp, err)
	}
	set, err := n.Maps()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := set.Config.Get()
	set.Close()
	if err != nil {
		t.Fatal(err)
	}
	mac := cfg.VtepMAC.String()
	want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
		n.Topo.UnderlayIP, n.Topo.UnderlayIP6, mac, mac)
	if got := string(resp.Kvs[0].Value); got != want {
		t.Fatalf("lease value\n got %s\nwant %s", got, want)
	}

	// node_config: what outer IPv6 headers and ICMPv6 errors come from.
	if cfg.UnderlayIP6 != n.Topo.UnderlayIP6 || cfg.HostIP6 != n.Subnet6.Addr() || cfg.UnderlayIP != n.Topo.UnderlayIP || cfg.HostIP != n.Subnet.Addr() {
		t.Fatalf("node config underlay %v/%v host %v/%v", cfg.UnderlayIP, cfg.UnderlayIP6, cfg.HostIP, cfg.HostIP6)
	}
	mtu := int(cfg.MTU) - loader.VXLAN6Overhead
	env, err := os.ReadFile(n.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"FLANNEL_IPV6_NETWORK=fd00:10:244::/48",
		fmt.Sprintf("FLANNEL_IPV6_SUBNET=%s/64", n.Subnet6.Addr().Next()),
		fmt.Sprintf("FLANNEL_MTU=%d", mtu),
	} {
		if !strings.Contains(string(env), line+"\n") {
			t.Errorf("subnet.env lacks %s:\n%s", line, env)
		}
	}
	if out, err := n.Topo.Exec(testCtx(t, 5*time.Second), "ip", "-6", "route", "show", "dev", loader.DefaultHostDevice); err != nil ||
		!strings.Contains(string(out), fmt.Sprintf("fd00:10:244::/48 via %s", n.Subnet6.Addr().Next())) {
		t.Errorf("weft0 IPv6 routes: %v\n%s", err, out)
	}
	if out, err := n.Topo.Exec(testCtx(t, 5*time.Second), "ip", "-6", "addr", "show", "dev", loader.DefaultHostDevice); err != nil ||
		!strings.Contains(string(out), n.Subnet6.Addr().String()+"/128") {
		t.Errorf("weft0 IPv6 address: %v\n%s", err, out)
	}

	// Peers' leases: a flannel dual-stack node and a Weft node without an
	// IPv6 underlay (v6-in-v4).
	flannelMAC, flannelMAC6, weftMAC := net.HardwareAddr{0x0e, 0xfa, 0x4e, 0, 0, 1}, net.HardwareAddr{0x0e, 0xfa, 0x4e, 0, 6, 1}, net.HardwareAddr{0x0e, 0xfa, 0x4e, 0, 0, 2}
	k1 := fmt.Sprintf("%s/subnets/10.244.201.0-24&fd00:10:244:c9::-64", c.EtcdPrefix)
	putKey(t, cli, k1, fmt.Sprintf(`{"PublicIP":"192.168.77.201","PublicIPv6":"fd77::c9","BackendType":"vxlan",`+
		`"BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`, flannelMAC, flannelMAC6))
	k2 := fmt.Sprintf("%s/subnets/10.244.202.0-24&fd00:10:244:ca::-64", c.EtcdPrefix)
	putKey(t, cli, k2, fmt.Sprintf(`{"PublicIP":"192.168.77.202","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, weftMAC))
	tun := func(sn, remote string, mac net.HardwareAddr) maps.Tunnel {
		return maps.Tunnel{Subnet: netip.MustParsePrefix(sn), Remote: netip.MustParseAddr(remote), VtepMAC: mac, VNI: 1, Mode: maps.ModeVXLAN}
	}
	wantTuns := []maps.Tunnel{
		tun("10.244.201.0/24", "192.168.77.201", flannelMAC),
		tun("fd00:10:244:c9::/64", "fd77::c9", flannelMAC6),
		tun("10.244.202.0/24", "192.168.77.202", weftMAC),
		tun("fd00:10:244:ca::/64", "192.168.77.202", weftMAC),
	}
	var got []maps.Tunnel
	defer func() {
		if t.Failed() {
			t.Logf("tunnels of n1: %v", tunnelSet(got))
		}
	}()
	waitFor(t, 5*time.Second, func() bool { got, _ = n.Tunnels(); return sameTunnels(got, wantTuns) }, "tunnels %v", tunnelSet(wantTuns))

	out, _, code := weftctl(t, c, n, "tunnels")
	if code != 0 || !strings.Contains(out, "fd00:10:244:c9::/64") || !strings.Contains(out, "fd77::c9") || !strings.Contains(out, "fd00:10:244:ca::/64") {
		t.Errorf("weftctl tunnels:\n%s", out)
	}

	// Leaving removes both of a node's tunnels.
	deleteKey(t, cli, k1)
	deleteKey(t, cli, k2)
	waitFor(t, 5*time.Second, func() bool { got, _ = n.Tunnels(); return len(got) == 0 }, "tunnels gone after the leases")
}

// TestWeftdRefusesIPv6OnlyWithoutIPv6Underlay: an IPv6-only network on a
// node whose underlay has no IPv6 address cannot work (its lease would
// publish no address at all); weftd says so and exits before touching the
// node, instead of the old blanket refusal of IPv6-only networks.
func TestWeftdRefusesIPv6OnlyWithoutIPv6Underlay(t *testing.T) {
	c := startLab(t, lab.Options{Network6: netip.MustParsePrefix("fd00:10:244::/48"), IPv6Only: true})
	_, err := c.AddWeftNode("n1")
	if err == nil {
		t.Fatal("weftd became ready on an IPv6-only network without an IPv6 underlay address")
	}
	if !strings.Contains(err.Error(), "IPv6-only") || !strings.Contains(err.Error(), "no global IPv6 address") {
		t.Fatalf("weftd's error does not say why:\n%v", err)
	}
	n := c.Nodes[0]
	<-c.Lab.Exited(n.Cmd)
	if code := n.Cmd.ProcessState.ExitCode(); code != 2 {
		t.Errorf("weftd exited %d, want 2 (as for a bad --iface)", code)
	}
	if _, statErr := os.Stat(n.PinPath); !os.IsNotExist(statErr) {
		t.Errorf("pins made before refusing: %v", statErr)
	}
}
