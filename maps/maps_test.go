package maps_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/maps"
)

// load gives each test its own unpinned maps from the real object, so the
// typed API is tested against the kernel's view of the generated layouts.
func load(t testing.TB) (*bpf.WeftMaps, *maps.Set) {
	t.Helper()
	spec, err := bpf.LoadWeft()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone // the objects pin by name; these tests must not
	}
	var objs bpf.WeftMaps
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load maps: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs, maps.FromMaps(&objs)
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func mapped(s string) [16]byte { return netip.MustParseAddr(s).As16() }

func TestTunnels(t *testing.T) {
	raw, s := load(t)
	b := maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Remote: netip.MustParseAddr("192.168.8.2"),
		VtepMAC: mac("8e:00:00:00:00:02"), VNI: 1, Mode: maps.ModeVXLAN}
	c := maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.0.0/16"), Remote: netip.MustParseAddr("192.168.8.3"),
		VtepMAC: mac("8e:00:00:00:00:03"), VNI: 0xffffff, Mode: maps.ModeDirect}
	v6 := maps.Tunnel{Subnet: netip.MustParsePrefix("fd00:1::/64"), Remote: netip.MustParseAddr("192.168.8.4"),
		VtepMAC: mac("8e:00:00:00:00:04"), VNI: 7, Mode: maps.ModeVXLAN}

	if _, err := s.Tunnels.Lookup(b.Subnet); !errors.Is(err, maps.ErrNotFound) {
		t.Fatalf("lookup in an empty map: %v, want ErrNotFound", err)
	}
	if err := s.Tunnels.Delete(b.Subnet); !errors.Is(err, maps.ErrNotFound) {
		t.Fatalf("delete from an empty map: %v, want ErrNotFound", err)
	}
	if _, err := s.Tunnels.Match(netip.MustParseAddr("10.244.1.9")); !errors.Is(err, maps.ErrNotFound) {
		t.Fatalf("match in an empty map: %v, want ErrNotFound", err)
	}
	for _, tun := range []maps.Tunnel{b, c, v6} {
		if err := s.Tunnels.Put(tun); err != nil {
			t.Fatalf("put %v: %v", tun, err)
		}
	}

	// Round trip.
	for _, tun := range []maps.Tunnel{b, c, v6} {
		got, err := s.Tunnels.Lookup(tun.Subnet)
		if err != nil {
			t.Fatalf("lookup %v: %v", tun.Subnet, err)
		}
		if !got.Equal(tun) {
			t.Errorf("lookup %v = %v, want %v", tun.Subnet, got, tun)
		}
	}
	all, err := s.Tunnels.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Errorf("All returned %d tunnels, want 3: %v", len(all), all)
	}
	for _, tun := range []maps.Tunnel{b, c, v6} {
		if !slices.ContainsFunc(all, tun.Equal) {
			t.Errorf("All lacks %v", tun)
		}
	}

	// The key bits the data plane's LPM lookup sees: IPv4 /n is 96+n over ::ffff:a.b.c.d.
	wantKeys := map[bpf.WeftTunnelKey]bool{
		{Prefixlen: 96 + 24, Addr: mapped("::ffff:10.244.1.0")}: true,
		{Prefixlen: 96 + 16, Addr: mapped("::ffff:10.244.0.0")}: true,
		{Prefixlen: 64, Addr: mapped("fd00:1::")}:               true,
	}
	var (
		key bpf.WeftTunnelKey
		val bpf.WeftTunnelInfo
	)
	iter := raw.Tunnels.Iterate()
	for iter.Next(&key, &val) {
		if !wantKeys[key] {
			t.Errorf("unexpected raw key %+v", key)
		}
		delete(wantKeys, key)
		if key.Prefixlen == 120 {
			want := bpf.WeftTunnelInfo{Remote: mapped("::ffff:192.168.8.2"), VtepMac: [6]byte{0x8e, 0, 0, 0, 0, 2},
				Mode: uint8(bpf.WeftTunnelModeTUNNEL_MODE_VXLAN), Vni: 1,
				StatsSlot: 1} // the first peer written, the first counter slot
			if val != want {
				t.Errorf("raw value %+v, want %+v", val, want)
			}
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(wantKeys) != 0 {
		t.Errorf("raw keys missing: %v", wantKeys)
	}

	// Longest prefix wins, as in the data plane.
	for addr, want := range map[string]maps.Tunnel{"10.244.1.9": b, "10.244.7.1": c} {
		got, err := s.Tunnels.Match(netip.MustParseAddr(addr))
		if err != nil {
			t.Fatalf("match %s: %v", addr, err)
		}
		if got.Remote != want.Remote || got.Subnet.IsValid() {
			t.Errorf("match %s = %v, want remote %v and no subnet", addr, got, want.Remote)
		}
	}
	if _, err := s.Tunnels.Match(netip.MustParseAddr("10.245.0.1")); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("match outside every subnet: %v, want ErrNotFound", err)
	}

	// An unmasked prefix is stored masked; replacing updates in place.
	moved := b
	moved.Subnet = netip.MustParsePrefix("10.244.1.77/24")
	moved.Remote = netip.MustParseAddr("192.168.8.22")
	if err := s.Tunnels.Put(moved); err != nil {
		t.Fatal(err)
	}
	got, err := s.Tunnels.Lookup(b.Subnet)
	if err != nil || got.Remote != moved.Remote || got.Subnet != b.Subnet {
		t.Errorf("after replace: %v, %v; want %v via %v", got, err, b.Subnet, moved.Remote)
	}
	if all, _ := s.Tunnels.All(); len(all) != 3 {
		t.Errorf("replace added an entry: %v", all)
	}

	// An exact lookup does not fall back to a covering prefix.
	if _, err := s.Tunnels.Lookup(netip.MustParsePrefix("10.244.1.0/25")); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("lookup of an absent /25 under a /24: %v, want ErrNotFound", err)
	}

	if err := s.Tunnels.Delete(b.Subnet); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tunnels.Lookup(b.Subnet); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("lookup after delete: %v, want ErrNotFound", err)
	}
	if err := s.Tunnels.Delete(b.Subnet); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	if got, err := s.Tunnels.Match(netip.MustParseAddr("10.244.1.9")); err != nil || got.Remote != c.Remote {
		t.Errorf("after deleting the /24 the /16 should match: %v, %v", got, err)
	}
}

func TestTunnelValidate(t *testing.T) {
	_, s := load(t)
	good := maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Remote: netip.MustParseAddr("192.168.8.2"),
		VtepMAC: mac("8e:00:00:00:00:02"), VNI: 1, Mode: maps.ModeVXLAN}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid tunnel: %v", err)
	}
	// Every family mix is a tunnel (ipv6-contract.md): v4-in-v6, v6-in-v4, v6-in-v6.
	for _, fam := range [][2]string{{"10.244.1.0/24", "fd00::2"}, {"fd00:10:244:1::/64", "192.168.8.2"}, {"fd00:10:244:1::/64", "fd00::2"}} {
		tun := good
		tun.Subnet, tun.Remote = netip.MustParsePrefix(fam[0]), netip.MustParseAddr(fam[1])
		if err := tun.Validate(); err != nil {
			t.Errorf("%s via %s: %v", fam[0], fam[1], err)
		}
		if err := s.Tunnels.Put(tun); err != nil {
			t.Errorf("%s via %s: put: %v", fam[0], fam[1], err)
		}
		got, err := s.Tunnels.Lookup(tun.Subnet)
		if err != nil || !got.Equal(tun) {
			t.Errorf("%s via %s: read back %v %v", fam[0], fam[1], got, err)
		}
		if err := s.Tunnels.Delete(tun.Subnet); err != nil {
			t.Errorf("delete %s: %v", tun.Subnet, err)
		}
	}
	for name, mutate := range map[string]func(*maps.Tunnel){
		"invalid subnet":  func(t *maps.Tunnel) { t.Subnet = netip.Prefix{} },
		"invalid remote":  func(t *maps.Tunnel) { t.Remote = netip.Addr{} },
		"remote ::":       func(t *maps.Tunnel) { t.Remote = netip.IPv6Unspecified() },
		"remote 0.0.0.0":  func(t *maps.Tunnel) { t.Remote = netip.IPv4Unspecified() },
		"remote fe80::2":  func(t *maps.Tunnel) { t.Remote = netip.MustParseAddr("fe80::2") },
		"remote ff02::1":  func(t *maps.Tunnel) { t.Remote = netip.MustParseAddr("ff02::1") },
		"remote ::1":      func(t *maps.Tunnel) { t.Remote = netip.IPv6Loopback() },
		"mode 0":          func(t *maps.Tunnel) { t.Mode = 0 },
		"mode 3":          func(t *maps.Tunnel) { t.Mode = 3 },
		"short VtepMAC":   func(t *maps.Tunnel) { t.VtepMAC = t.VtepMAC[:5] },
		"no VtepMAC":      func(t *maps.Tunnel) { t.VtepMAC = nil },
		"EUI-64 VtepMAC":  func(t *maps.Tunnel) { t.VtepMAC = mac("00:00:00:00:fe:80:00:00") },
		"VNI over 24 bit": func(t *maps.Tunnel) { t.VNI = 1 << 24 },
	} {
		tun := good
		tun.VtepMAC = slices.Clone(good.VtepMAC)
		mutate(&tun)
		if err := tun.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %v", name, tun)
		}
		if err := s.Tunnels.Put(tun); err == nil {
			t.Errorf("%s: Put accepted %v", name, tun)
		}
	}
	if all, err := s.Tunnels.All(); err != nil || len(all) != 0 {
		t.Errorf("invalid tunnels reached the map: %v, %v", all, err)
	}
}

func TestMode(t *testing.T) {
	for _, m := range []maps.Mode{maps.ModeVXLAN, maps.ModeDirect} {
		p, err := maps.ParseMode(m.String())
		if err != nil || p != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), p, err)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var back maps.Mode
		if err := json.Unmarshal(b, &back); err != nil || back != m {
			t.Errorf("JSON round trip of %v: %s -> %v, %v", m, b, back, err)
		}
	}
	if _, err := maps.ParseMode("gre"); err == nil {
		t.Error("ParseMode accepted gre")
	}
	if maps.ModeVXLAN.String() != "vxlan" || maps.ModeDirect.String() != "direct" || maps.Mode(9).String() != "mode(9)" {
		t.Error("Mode names changed")
	}
}

func TestEndpoints(t *testing.T) {
	raw, s := load(t)
	a := maps.Endpoint{IP: netip.MustParseAddr("10.244.0.2"), IfIndex: 11, MAC: mac("0a:58:0a:f4:00:02"), HostMAC: mac("ee:00:00:00:00:02")}
	b := maps.Endpoint{IP: netip.MustParseAddr("10.244.0.3"), IfIndex: 12, MAC: mac("0a:58:0a:f4:00:03"), HostMAC: mac("ee:00:00:00:00:03")}
	v6 := maps.Endpoint{IP: netip.MustParseAddr("fd00::3"), IfIndex: 12, MAC: mac("0a:58:0a:f4:00:03"), HostMAC: mac("ee:00:00:00:00:03")}

	if _, err := s.Endpoints.Lookup(a.IP); !errors.Is(err, maps.ErrNotFound) {
		t.Fatalf("lookup in an empty map: %v, want ErrNotFound", err)
	}
	if err := s.Endpoints.Delete(a.IP); !errors.Is(err, maps.ErrNotFound) {
		t.Fatalf("delete from an empty map: %v, want ErrNotFound", err)
	}
	for _, ep := range []maps.Endpoint{a, b, v6} {
		if err := s.Endpoints.Put(ep); err != nil {
			t.Fatal(err)
		}
	}
	eq := func(x, y maps.Endpoint) bool {
		return x.IP == y.IP && x.IfIndex == y.IfIndex && x.MAC.String() == y.MAC.String() && x.HostMAC.String() == y.HostMAC.String()
	}
	for _, ep := range []maps.Endpoint{a, b, v6} {
		got, err := s.Endpoints.Lookup(ep.IP)
		if err != nil || !eq(got, ep) {
			t.Errorf("lookup %v = %+v, %v; want %+v", ep.IP, got, err, ep)
		}
	}
	// IPv4-mapped IPv6 spelling finds the IPv4 entry (one key form).
	if got, err := s.Endpoints.Lookup(netip.MustParseAddr("::ffff:10.244.0.2")); err != nil || !eq(got, a) {
		t.Errorf("lookup by mapped address = %+v, %v", got, err)
	}
	all, err := s.Endpoints.All()
	if err != nil || len(all) != 3 {
		t.Fatalf("All = %v, %v; want 3", all, err)
	}
	for _, ep := range []maps.Endpoint{a, b, v6} {
		if !slices.ContainsFunc(all, func(x maps.Endpoint) bool { return eq(x, ep) }) {
			t.Errorf("All lacks %+v", ep)
		}
	}

	// Raw layout: key ::ffff:a.b.c.d, value as the C struct.
	var val bpf.WeftEndpointInfo
	if err := raw.Endpoints.Lookup(&bpf.WeftEndpointKey{Addr: mapped("::ffff:10.244.0.2")}, &val); err != nil {
		t.Fatalf("raw lookup: %v", err)
	}
	if want := (bpf.WeftEndpointInfo{Ifindex: 11, Mac: [6]byte{0x0a, 0x58, 0x0a, 0xf4, 0, 2}, HostMac: [6]byte{0xee, 0, 0, 0, 0, 2}}); val != want {
		t.Errorf("raw value %+v, want %+v", val, want)
	}

	if err := s.Endpoints.Delete(a.IP); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Endpoints.Lookup(a.IP); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("lookup after delete: %v", err)
	}
	if err := s.Endpoints.Delete(a.IP); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}

	for name, bad := range map[string]maps.Endpoint{
		"invalid IP":  {IfIndex: 1, MAC: a.MAC, HostMAC: a.HostMAC},
		"ifindex 0":   {IP: a.IP, MAC: a.MAC, HostMAC: a.HostMAC},
		"short MAC":   {IP: a.IP, IfIndex: 1, MAC: a.MAC[:4], HostMAC: a.HostMAC},
		"no host MAC": {IP: a.IP, IfIndex: 1, MAC: a.MAC},
		"EUI-64 MAC":  {IP: a.IP, IfIndex: 1, MAC: mac("00:00:00:00:fe:80:00:00"), HostMAC: a.HostMAC},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, bad)
		}
		if err := s.Endpoints.Put(bad); err == nil {
			t.Errorf("%s: Put accepted %+v", name, bad)
		}
	}
}

func goodConfig() maps.Config {
	return maps.Config{
		UnderlayIfIndex: 2, UnderlayIP: netip.MustParseAddr("192.168.8.1"), UnderlayMAC: mac("02:00:00:00:08:01"),
		HostIfIndex: 3, HostIP: netip.MustParseAddr("10.244.0.0"), VtepMAC: mac("8e:00:00:00:00:01"),
		VNI: 1, Port: 8472, MTU: 1500, SrcPortMin: 40000, SrcPortMax: 50000,
	}
}

func TestConfig(t *testing.T) {
	raw, s := load(t)
	if _, err := s.Config.Get(); !errors.Is(err, maps.ErrNotConfigured) {
		t.Fatalf("get before set: %v, want ErrNotConfigured", err)
	}
	c := goodConfig()
	if err := s.Config.Set(c); err != nil {
		t.Fatal(err)
	}
	got, err := s.Config.Get()
	if err != nil {
		t.Fatal(err)
	}
	c.Layout = maps.PinLayout
	gj, _ := json.Marshal(got)
	cj, _ := json.Marshal(c)
	if string(gj) != string(cj) {
		t.Errorf("round trip:\n got %s\nwant %s", gj, cj)
	}

	var v bpf.WeftNodeConfig
	if err := raw.Config.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	if v.UnderlayIp != mapped("::ffff:192.168.8.1") || v.HostIp != mapped("::ffff:10.244.0.0") ||
		v.Port != 8472 || v.Mtu != 1500 || v.Vni != 1 || v.Layout != maps.PinLayout ||
		v.UnderlayMac != [6]byte{2, 0, 0, 0, 8, 1} || v.VtepMac != [6]byte{0x8e, 0, 0, 0, 0, 1} {
		t.Errorf("raw config %+v", v)
	}

	// Zero source-port range means the vxlan driver's default.
	c = goodConfig()
	c.SrcPortMin, c.SrcPortMax = 0, 0
	if err := s.Config.Set(c); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Config.Get(); got.SrcPortMin != maps.DefaultSrcPortMin || got.SrcPortMax != maps.DefaultSrcPortMax {
		t.Errorf("default source ports [%d, %d)", got.SrcPortMin, got.SrcPortMax)
	}

	if err := s.Config.Clear(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Config.Get(); !errors.Is(err, maps.ErrNotConfigured) {
		t.Errorf("get after clear: %v, want ErrNotConfigured", err)
	}
}

func TestConfigValidate(t *testing.T) {
	_, s := load(t)
	for name, mutate := range map[string]func(*maps.Config){
		"underlay ifindex 0":    func(c *maps.Config) { c.UnderlayIfIndex = 0 },
		"host ifindex 0":        func(c *maps.Config) { c.HostIfIndex = 0 },
		"no underlay IP":        func(c *maps.Config) { c.UnderlayIP = netip.Addr{} },
		"no host IP":            func(c *maps.Config) { c.HostIP = netip.Addr{} },
		"mapped underlay IPv6":  func(c *maps.Config) { c.UnderlayIP6 = netip.MustParseAddr("::ffff:192.168.8.1") },
		"IPv4 as host IPv6":     func(c *maps.Config) { c.HostIP6 = netip.MustParseAddr("10.244.0.0") },
		"IPv6 underlay":         func(c *maps.Config) { c.UnderlayIP = netip.MustParseAddr("fd00::1") },
		"IPv6 host IP":          func(c *maps.Config) { c.HostIP = netip.MustParseAddr("fd00::1") },
		"short underlay MAC":    func(c *maps.Config) { c.UnderlayMAC = c.UnderlayMAC[:5] },
		"no VtepMAC":            func(c *maps.Config) { c.VtepMAC = nil },
		"VNI over 24 bit":       func(c *maps.Config) { c.VNI = 1 << 24 },
		"port 0":                func(c *maps.Config) { c.Port = 0 },
		"MTU under 576 + 50":    func(c *maps.Config) { c.MTU = 625 },
		"empty source ports":    func(c *maps.Config) { c.SrcPortMin, c.SrcPortMax = 50000, 50000 },
		"inverted source ports": func(c *maps.Config) { c.SrcPortMin, c.SrcPortMax = 50000, 40000 },
	} {
		c := goodConfig()
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
		if err := s.Config.Set(c); err == nil {
			t.Errorf("%s: Set accepted it", name)
		}
	}
	if _, err := s.Config.Get(); !errors.Is(err, maps.ErrNotConfigured) {
		t.Errorf("an invalid config reached the map: %v", err)
	}
	c := goodConfig()
	c.MTU = 626
	if err := c.Validate(); err != nil {
		t.Errorf("MTU 626 rejected: %v", err)
	}
	// An IPv6-only node: no IPv4 underlay or weft0 address.
	c = goodConfig()
	c.UnderlayIP, c.HostIP = netip.Addr{}, netip.Addr{}
	c.UnderlayIP6, c.HostIP6 = netip.MustParseAddr("fd00:8::1"), netip.MustParseAddr("fc00:10:244::")
	if err := c.Validate(); err != nil {
		t.Errorf("IPv6-only config rejected: %v", err)
	}
}

func TestConfigIPv6RoundTrip(t *testing.T) {
	raw, s := load(t)
	for name, c := range map[string]maps.Config{
		"dual-stack": func() maps.Config {
			c := goodConfig()
			c.UnderlayIP6, c.HostIP6 = netip.MustParseAddr("fd00:8::1"), netip.MustParseAddr("fc00:10:244::")
			return c
		}(),
		"IPv6 only": func() maps.Config {
			c := goodConfig()
			c.UnderlayIP, c.HostIP = netip.Addr{}, netip.Addr{}
			c.UnderlayIP6, c.HostIP6 = netip.MustParseAddr("fd00:8::1"), netip.MustParseAddr("fc00:10:244::")
			return c
		}(),
	} {
		if err := s.Config.Set(c); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := s.Config.Get()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c.Layout = maps.PinLayout
		gj, _ := json.Marshal(got)
		cj, _ := json.Marshal(c)
		if string(gj) != string(cj) {
			t.Errorf("%s round trip:\n got %s\nwant %s", name, gj, cj)
		}
		var v bpf.WeftNodeConfig
		if err := raw.Config.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		if v.UnderlayIp6 != netip.MustParseAddr("fd00:8::1").As16() || v.HostIp6 != netip.MustParseAddr("fc00:10:244::").As16() {
			t.Errorf("%s: raw IPv6 fields %x %x", name, v.UnderlayIp6, v.HostIp6)
		}
		if !c.UnderlayIP.IsValid() && v.UnderlayIp != [16]byte{} {
			t.Errorf("%s: absent IPv4 underlay stored as %x, want all-zero", name, v.UnderlayIp)
		}
	}
}

func TestCounters(t *testing.T) {
	raw, s := load(t)
	names, err := maps.CounterNames()
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != int(bpf.WeftCounterCNT__MAX) {
		t.Fatalf("%d counter names, enum has %d", len(names), bpf.WeftCounterCNT__MAX)
	}
	for c, want := range map[bpf.WeftCounter]string{
		bpf.WeftCounterCNT_LOCAL:             "local",
		bpf.WeftCounterCNT_ENCAP:             "encap",
		bpf.WeftCounterCNT_DECAP:             "decap",
		bpf.WeftCounterCNT_PASS_NO_CONFIG:    "pass_no_config",
		bpf.WeftCounterCNT_DROP_NO_TUNNEL:    "drop_no_tunnel",
		bpf.WeftCounterCNT_DROP_UNKNOWN_PEER: "drop_unknown_peer",
		bpf.WeftCounterCNT_DROP_MTU:          "drop_mtu",
	} {
		if names[c] != want {
			t.Errorf("counter %d named %q, want %q", c, names[c], want)
		}
	}
	// Counters from CNT_FIRST_DROP on are drops, except the passes and notes
	// appended after the original drops (counter_is_drop in bpf/helpers.h).
	appendedNonDrops := map[bpf.WeftCounter]bool{
		bpf.WeftCounterCNT_PASS_FRAGMENT: true, bpf.WeftCounterCNT_DECAP_REASSEMBLED: true, bpf.WeftCounterCNT_ECN_CE: true,
		bpf.WeftCounterCNT_PASS_NO_XDP_META: true, bpf.WeftCounterCNT_ENCAP_KERNEL: true,
		bpf.WeftCounterCNT_PASS_CONNTRACK:  true,
		bpf.WeftCounterCNT_PASS_OUTER6CSUM: true, bpf.WeftCounterCNT_PASS_OUTER6EXTHDR: true,
		bpf.WeftCounterCNT_ND_REPLY: true, bpf.WeftCounterCNT_PACKET_TOO_BIG: true,
	}
	for i, n := range names {
		drop := i >= int(bpf.WeftCounterCNT_DROP_NO_TUNNEL) && !appendedNonDrops[bpf.WeftCounter(i)]
		if (maps.Counter{Name: n}).IsDrop() != drop {
			t.Errorf("IsDrop(%s) = %v, want %v (counter_is_drop)", n, !drop, drop)
		}
	}

	// Write different numbers on every CPU; the API must sum them.
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []bpf.WeftCounter{bpf.WeftCounterCNT_ENCAP, bpf.WeftCounterCNT_DROP_SHORT} {
		per := make([]bpf.WeftCounterValue, ncpu)
		for i := range per {
			per[i] = bpf.WeftCounterValue{Packets: uint64(i + 1), Bytes: uint64(100 * (i + 1))}
		}
		if err := raw.Stats.Put(uint32(c), per); err != nil {
			t.Fatal(err)
		}
	}
	wantPackets := uint64(ncpu * (ncpu + 1) / 2)
	all, err := s.Stats.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(names) {
		t.Fatalf("All has %d counters, want %d (zeros included)", len(all), len(names))
	}
	for _, c := range all {
		want := uint64(0)
		if c.Name == "encap" || c.Name == "drop_short" {
			want = wantPackets
		}
		if c.Packets != want || c.Bytes != 100*want {
			t.Errorf("%s = %d packets %d bytes, want %d and %d", c.Name, c.Packets, c.Bytes, want, 100*want)
		}
	}
	if c, err := s.Stats.Get("drop_short"); err != nil || c.Packets != wantPackets || !c.IsDrop() {
		t.Errorf("Get(drop_short) = %+v, %v", c, err)
	}
	if _, err := s.Stats.Get("no_such_counter"); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Get of an unknown name: %v, want ErrNotFound", err)
	}
	snap, err := s.Stats.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap["encap"] != wantPackets || snap["local"] != 0 || len(snap) != len(names) {
		t.Errorf("Snapshot = %v", snap)
	}

	if err := s.Stats.Reset(); err != nil {
		t.Fatal(err)
	}
	all, _ = s.Stats.All()
	for _, c := range all {
		if c.Packets != 0 || c.Bytes != 0 {
			t.Errorf("after Reset %s = %+v", c.Name, c)
		}
	}
}

func TestPeerStats(t *testing.T) {
	raw, s := load(t)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	peer := netip.MustParseAddr("192.168.8.2")
	if err := s.Tunnels.Put(maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Remote: peer,
		VtepMAC: mac("8e:00:00:00:00:02"), VNI: 1, Mode: maps.ModeVXLAN}); err != nil {
		t.Fatal(err)
	}
	slot := rawSlot(t, raw, "10.244.1.0/24")
	if slot == 0 {
		t.Fatal("the entry carries no counter slot")
	}
	per := make([]bpf.WeftPeerStats, ncpu)
	for i := range per {
		per[i] = bpf.WeftPeerStats{TxPackets: 1, TxBytes: 10, RxPackets: 2, RxBytes: 20}
	}
	// What the programs would have counted, at the entry's slot and in the overflow slot.
	if err := raw.PeerCounters.Put(slot, per); err != nil {
		t.Fatal(err)
	}
	if err := raw.PeerCounters.Put(uint32(0), per); err != nil {
		t.Fatal(err)
	}
	all, err := s.PeerStats.All()
	if err != nil {
		t.Fatal(err)
	}
	n := uint64(ncpu)
	want := maps.PeerStats{Remote: peer, TxPackets: n, TxBytes: 10 * n, RxPackets: 2 * n, RxBytes: 20 * n}
	if len(all) != 1 || all[0] != want {
		t.Errorf("All = %+v, want [%+v]", all, want)
	}
	over, err := s.PeerStats.Overflow()
	if err != nil {
		t.Fatal(err)
	}
	if want.Remote = (netip.Addr{}); over != want {
		t.Errorf("Overflow = %+v, want %+v", over, want)
	}
	if err := s.PeerStats.Delete(peer); err != nil {
		t.Fatal(err)
	}
	if err := s.PeerStats.Delete(netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Errorf("deleting a peer without tunnels: %v, want nil", err)
	}
	if all, _ := s.PeerStats.All(); len(all) != 1 || all[0] != (maps.PeerStats{Remote: peer}) {
		t.Errorf("after delete: %+v, want the peer at zero", all)
	}
}

// rawSlot is the counter slot the kernel's entry for subnet carries.
func rawSlot(t *testing.T, raw *bpf.WeftMaps, subnet string) uint32 {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	var (
		key bpf.WeftTunnelKey
		val bpf.WeftTunnelInfo
	)
	iter := raw.Tunnels.Iterate()
	for iter.Next(&key, &val) {
		bits := int(key.Prefixlen)
		a := netip.AddrFrom16(key.Addr)
		if a.Is4In6() {
			a, bits = a.Unmap(), bits-96
		}
		if netip.PrefixFrom(a, bits) == p {
			return val.StatsSlot
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no entry for %s", subnet)
	return 0
}

// One counter slot per remote address: shared by its subnets, given back
// with its last entry, zeroed before the next peer gets it, found again by
// a fresh allocator (a restarted weftd), and slot 0 once every slot is taken.
func TestPeerCounterSlots(t *testing.T) {
	raw, s := loadSlots(t, 4) // slots 1-3, slot 0 for the rest
	tun := func(subnet, remote string) maps.Tunnel {
		return maps.Tunnel{Subnet: netip.MustParsePrefix(subnet), Remote: netip.MustParseAddr(remote),
			VtepMAC: mac("8e:00:00:00:00:02"), VNI: 1, Mode: maps.ModeVXLAN}
	}
	put := func(s *maps.Set, ts ...maps.Tunnel) {
		t.Helper()
		for _, x := range ts {
			if err := s.Tunnels.Put(x); err != nil {
				t.Fatal(err)
			}
		}
	}
	del := func(s *maps.Set, subnet string) {
		t.Helper()
		if err := s.Tunnels.Delete(netip.MustParsePrefix(subnet)); err != nil {
			t.Fatal(err)
		}
	}
	count := func(slot uint32, pkts uint64) {
		t.Helper()
		per := make([]bpf.WeftPeerStats, ebpf.MustPossibleCPU())
		per[0].TxPackets = pkts
		if err := raw.PeerCounters.Put(slot, per); err != nil {
			t.Fatal(err)
		}
	}
	stats := func(s *maps.Set) map[string]uint64 {
		t.Helper()
		all, err := s.PeerStats.All()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]uint64{}
		for _, p := range all {
			out[p.Remote.String()] = p.TxPackets
		}
		return out
	}

	// A node's IPv4 and IPv6 subnets are one peer.
	put(s, tun("10.244.1.0/24", "192.168.8.1"), tun("fd00:1::/64", "192.168.8.1"), tun("10.244.2.0/24", "192.168.8.2"))
	a, a6, b := rawSlot(t, raw, "10.244.1.0/24"), rawSlot(t, raw, "fd00:1::/64"), rawSlot(t, raw, "10.244.2.0/24")
	if a == 0 || b == 0 || a != a6 || a == b {
		t.Fatalf("slots: 192.168.8.1 %d and %d, 192.168.8.2 %d; want one non-zero slot each", a, a6, b)
	}
	count(a, 5)
	count(b, 7)
	if got := stats(s); len(got) != 2 || got["192.168.8.1"] != 5 || got["192.168.8.2"] != 7 {
		t.Fatalf("All = %v", got)
	}

	// The slot stays while one entry points at the remote.
	del(s, "10.244.1.0/24")
	if got := stats(s); got["192.168.8.1"] != 5 {
		t.Errorf("after deleting one of two subnets: %v", got)
	}
	// Rewriting an entry keeps its slot.
	put(s, tun("fd00:1::/64", "192.168.8.1"))
	if got := rawSlot(t, raw, "fd00:1::/64"); got != a {
		t.Errorf("rewritten entry has slot %d, want %d", got, a)
	}
	// The last one gives it back; the next new peer gets it, zeroed.
	del(s, "fd00:1::/64")
	if got := stats(s); len(got) != 1 {
		t.Errorf("after deleting the last subnet: %v, want only 192.168.8.2", got)
	}
	put(s, tun("10.244.3.0/24", "192.168.8.3"))
	if got := rawSlot(t, raw, "10.244.3.0/24"); got != a {
		t.Errorf("new peer got slot %d, want the freed %d", got, a)
	}
	if got := stats(s); got["192.168.8.3"] != 0 {
		t.Errorf("a reused slot was not zeroed: %v", got)
	}
	// Moving a subnet to another remote moves it to that remote's slot and
	// frees the old remote's.
	put(s, tun("10.244.2.0/24", "192.168.8.4"))
	c := rawSlot(t, raw, "10.244.2.0/24")
	if c == 0 || c == a {
		t.Errorf("moved subnet has slot %d", c)
	}
	if got := stats(s); len(got) != 2 || got["192.168.8.4"] != 0 {
		t.Errorf("after the move: %v, want 192.168.8.3 and a zeroed 192.168.8.4", got)
	}

	// A restarted writer goes on with the pinned slots.
	s2 := maps.FromMaps(raw)
	put(s2, tun("10.244.30.0/24", "192.168.8.3"))
	if got := rawSlot(t, raw, "10.244.30.0/24"); got != a {
		t.Errorf("after a restart 192.168.8.3's second subnet got slot %d, want %d", got, a)
	}
	put(s2, tun("10.244.5.0/24", "192.168.8.5"))
	d := rawSlot(t, raw, "10.244.5.0/24")
	if d == 0 || d == a || d == c {
		t.Errorf("after a restart a new peer got slot %d, in use: %d, %d", d, a, c)
	}
	// Every slot taken: the next peer counts in slot 0, and is no row.
	put(s2, tun("10.244.6.0/24", "192.168.8.6"))
	if got := rawSlot(t, raw, "10.244.6.0/24"); got != 0 {
		t.Errorf("peer past the last slot got slot %d, want 0", got)
	}
	if got := stats(s2); len(got) != 3 {
		t.Errorf("All with an overflowed peer: %v, want the three with slots", got)
	}
	// A freed slot goes to the next new peer.
	del(s2, "10.244.5.0/24")
	put(s2, tun("10.244.7.0/24", "192.168.8.7"))
	if got := rawSlot(t, raw, "10.244.7.0/24"); got != d {
		t.Errorf("slot %d, want the freed %d", got, d)
	}
}

// Batch writes take slots like single ones, and a batch delete gives them back.
func TestPeerCounterSlotsBatch(t *testing.T) {
	raw, s := loadSlots(t, 64)
	var ts []maps.Tunnel
	var subnets []netip.Prefix
	for i := range 40 {
		ts = append(ts, maps.Tunnel{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			Remote: netip.AddrFrom4([4]byte{192, 168, 8, byte(i / 2)}), VtepMAC: mac("8e:00:00:00:00:02"), VNI: 1, Mode: maps.ModeVXLAN})
		subnets = append(subnets, ts[i].Subnet)
	}
	if _, err := s.Tunnels.PutBatch(ts); err != nil {
		t.Fatal(err)
	}
	byRemote := map[netip.Addr]uint32{}
	seen := map[uint32]netip.Addr{}
	for _, x := range ts {
		slot := rawSlot(t, raw, x.Subnet.String())
		if prev, ok := byRemote[x.Remote]; ok && prev != slot {
			t.Errorf("%v has slots %d and %d", x.Remote, prev, slot)
		}
		if other, ok := seen[slot]; slot == 0 || ok && other != x.Remote {
			t.Errorf("%v got slot %d (also %v's)", x.Remote, slot, other)
		}
		byRemote[x.Remote], seen[slot] = slot, x.Remote
	}
	if _, err := s.Tunnels.DeleteBatch(subnets); err != nil {
		t.Fatal(err)
	}
	if err := s.Tunnels.Put(ts[0]); err != nil {
		t.Fatal(err)
	}
	if got := rawSlot(t, raw, ts[0].Subnet.String()); got == 0 || got > 20 {
		t.Errorf("after deleting all, a new peer got slot %d, want one of the 20 freed", got)
	}
}

// loadSlots is load with a peer_counters map of the given size.
func loadSlots(t *testing.T, slots uint32) (*bpf.WeftMaps, *maps.Set) {
	t.Helper()
	spec, err := bpf.LoadWeft()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	spec.Maps[bpf.WeftMapPeerCounters].MaxEntries = slots
	var objs bpf.WeftMaps
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load maps: %+v", err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs, maps.FromMaps(&objs)
}

func TestOpenPinnedMissing(t *testing.T) {
	_, err := maps.OpenPinned(t.TempDir())
	if !errors.Is(err, maps.ErrNotPinned) {
		t.Errorf("OpenPinned on an empty directory: %v, want ErrNotPinned", err)
	}
	if err != nil && !strings.Contains(err.Error(), "tunnels") {
		t.Errorf("error does not name the map: %v", err)
	}
}
