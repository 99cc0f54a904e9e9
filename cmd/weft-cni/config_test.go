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
	good := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	env, err := parseSubnetEnv([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet != netip.MustParsePrefix("10.244.1.0/24") || env.MTU != 1450 || env.Network != netip.MustParsePrefix("10.244.0.0/16") {
		t.Errorf("parsed %+v", env)
	}
	for _, bad := range []struct{ in, want string }{
		{"FLANNEL_MTU=1450\n", "FLANNEL_SUBNET missing"},
		{"FLANNEL_SUBNET=10.244.1.1/24\n", "FLANNEL_MTU missing"},
		{"FLANNEL_SUBNET=10.244.1.1/31\nFLANNEL_MTU=1450\n", "/30 or larger"},
		{"FLANNEL_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n", "IPv4"},
		{"FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=big\n", "FLANNEL_MTU"},
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
