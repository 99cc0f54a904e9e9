package main

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func TestLoadConf(t *testing.T) {
	for _, c := range []struct {
		name     string
		in       string
		wantCode uint // 0: success
		wantMsg  string
		check    func(t *testing.T, c *NetConf)
	}{
		{name: "minimal gets defaults", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.SubnetFile != DefaultSubnetFile || c.PinPath != DefaultPinPath || c.DataDir != DefaultDataDir {
					t.Errorf("defaults = %q %q %q", c.SubnetFile, c.PinPath, c.DataDir)
				}
			}},
		{name: "paths override", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","subnetFile":"/a/s.env","pinPath":"/sys/fs/bpf/x","dataDir":"/d"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.SubnetFile != "/a/s.env" || c.PinPath != "/sys/fs/bpf/x" || c.DataDir != "/d" {
					t.Errorf("paths = %q %q %q", c.SubnetFile, c.PinPath, c.DataDir)
				}
			}},
		{name: "unknown keys ignored (runtimes add their own)", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","runtimeConfig":{"x":1},"foo":2}`},
		{name: "wrong type", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","pinPath":42}`,
			wantCode: types.ErrDecodingFailure, wantMsg: "pinPath"},
		{name: "invalid JSON", in: `{"cniVersion":`, wantCode: types.ErrDecodingFailure, wantMsg: "parse weft-cni network config"},
		{name: "relative path", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","dataDir":"var/lib"}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "dataDir"},
		{name: "delegated ipam refused", in: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","ipam":{"type":"host-local"}}`,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "ipam type"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf, err := loadConf([]byte(c.in))
			if c.wantCode == 0 {
				if err != nil {
					t.Fatalf("loadConf: %v", err)
				}
				if c.check != nil {
					c.check(t, conf)
				}
				return
			}
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != c.wantCode || !strings.Contains(cerr.Error(), c.wantMsg) {
				t.Fatalf("loadConf error = %v, want CNI code %d mentioning %q", err, c.wantCode, c.wantMsg)
			}
		})
	}
}

func TestParseSubnetEnv(t *testing.T) {
	for _, c := range []struct {
		name, in          string
		subnet, subnet6   string
		network, network6 string
	}{
		{name: "IPv4", in: "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
			subnet: "10.244.1.0/24", network: "10.244.0.0/16"},
		{name: "dual-stack", in: "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n" +
			"FLANNEL_IPV6_NETWORK=fc00:10:244::/56\nFLANNEL_IPV6_SUBNET=fc00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
			subnet: "10.244.1.0/24", network: "10.244.0.0/16", subnet6: "fc00:10:244:1::/64", network6: "fc00:10:244::/56"},
		{name: "IPv6 only", in: "FLANNEL_IPV6_NETWORK=fc00:10:244::/56\nFLANNEL_IPV6_SUBNET=fc00:10:244:1::1/64\nFLANNEL_MTU=1430\n",
			subnet6: "fc00:10:244:1::/64", network6: "fc00:10:244::/56"},
		{name: "smallest subnets", in: "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/30\n" +
			"FLANNEL_IPV6_NETWORK=fc00::/64\nFLANNEL_IPV6_SUBNET=fc00::1/126\nFLANNEL_MTU=1280\n",
			subnet: "10.244.1.0/30", network: "10.244.0.0/16", subnet6: "fc00::/126", network6: "fc00::/64"},
	} {
		env, err := parseSubnetEnv([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		pp := func(s string) netip.Prefix {
			if s == "" {
				return netip.Prefix{}
			}
			return netip.MustParsePrefix(s)
		}
		if env.Subnet != pp(c.subnet) || env.Network != pp(c.network) || env.Subnet6 != pp(c.subnet6) || env.Network6 != pp(c.network6) {
			t.Errorf("%s: parsed %+v", c.name, env)
		}
		if want := len(strings.Fields(c.subnet + " " + c.subnet6)); len(env.subnets()) != want || env.subnets()[0].Addr().Is6() != (c.subnet == "") {
			t.Errorf("%s: subnets() = %v, want IPv4 first, %d in all", c.name, env.subnets(), want)
		}
	}
	for _, bad := range []struct{ in, want string }{
		{"FLANNEL_MTU=1450\n", "neither an IPv4 nor an IPv6 network"},
		{"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n", "MTU 0"},
		{"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n", "must be given together"},
		{"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/31\nFLANNEL_MTU=1450\n", "/30 or larger"},
		{"FLANNEL_NETWORK=fd00::/16\nFLANNEL_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n", "wrong family"},
		{"FLANNEL_IPV6_NETWORK=10.0.0.0/8\nFLANNEL_IPV6_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n", "wrong family"},
		{"FLANNEL_IPV6_NETWORK=fd00::/16\nFLANNEL_IPV6_SUBNET=fd00::1/127\nFLANNEL_MTU=1450\n", "/126 or larger"},
		{"FLANNEL_IPV6_NETWORK=fd00::/16\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1200\n", "IPv6 needs at least 1280"},
		{"FLANNEL_IPV6_NETWORK=fd00::/16\nFLANNEL_IPV6_SUBNET=fd01::1/64\nFLANNEL_MTU=1450\n", "not inside"},
		{"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=big\n", "FLANNEL_MTU"},
		{"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=100\n", "576 to 65535"},
		{"FLANNEL_NETWORK=10.9.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n", "not inside"},
		{"garbage\n", "no '='"},
	} {
		if _, err := parseSubnetEnv([]byte(bad.in)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parse %q: err = %v, want %q", bad.in, err, bad.want)
		}
	}
}

func TestHostVethName(t *testing.T) {
	a := hostVethName("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, hostVethPrefix) {
		t.Fatalf("name %q: want 15 bytes starting %q", a, hostVethPrefix)
	}
	if a != hostVethName("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "eth0") {
		t.Error("not deterministic")
	}
	if a == hostVethName("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "net1") {
		t.Error("interface name not part of the name")
	}
}

// The conflist shipped for /etc/cni/net.d parses as a runtime reads it and
// its plugin entry is a valid weft-cni config with every default.
func TestShippedConflist(t *testing.T) {
	list, err := libcni.ConfListFromFile("10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "weft-cni" || list.CNIVersion != "1.0.0" {
		t.Fatalf("conflist = %+v", list)
	}
	conf, err := loadConf(list.Plugins[0].Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if conf.PinPath != DefaultPinPath || conf.SubnetFile != DefaultSubnetFile || conf.DataDir != DefaultDataDir {
		t.Errorf("conf = %+v", conf)
	}
}
