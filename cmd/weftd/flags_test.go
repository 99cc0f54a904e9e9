package main

import (
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestFlagsFromEnv(t *testing.T) {
	// flanneld's manifests pass some flags as FLANNELD_<FLAG>.
	c, err := parseFlags([]string{"--iface=eth1"}, envOf(map[string]string{
		"FLANNELD_IFACE":                  "eth9", // the command line wins
		"FLANNELD_KUBE_SUBNET_MGR":        "true",
		"FLANNELD_KUBE_ANNOTATION_PREFIX": "weft.example.com",
		"FLANNELD_PUBLIC_IP":              "192.168.5.5",
		"FLANNELD_SUBNET_FILE":            "/run/x/subnet.env",
		"FLANNELD_NET_CONFIG_PATH":        "/etc/x/net-conf.json",
		"POD_NAME":                        "weft-abcde",
		"POD_NAMESPACE":                   "kube-weft",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Iface != "eth1" || !c.KubeSubnetMgr || c.Kube.AnnotationPrefix != "weft.example.com" || c.PublicIP.String() != "192.168.5.5" ||
		c.SubnetFile != "/run/x/subnet.env" || c.Kube.NetConfPath != "/etc/x/net-conf.json" ||
		c.Kube.PodName != "weft-abcde" || c.Kube.PodNamespace != "kube-weft" {
		t.Fatalf("%+v", c)
	}

	// Every flag has its variable: a bad value through the environment is
	// rejected like one on the command line, naming the variable.
	_, err = parseFlags(nil, envOf(map[string]string{"FLANNELD_SUBNET_LEASE_TTL": "soon"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "FLANNELD_SUBNET_LEASE_TTL") {
		t.Fatalf("got %v", err)
	}
	_, err = parseFlags(nil, envOf(map[string]string{"FLANNELD_PUBLIC_IP": "nope"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--public-ip") {
		t.Fatalf("got %v", err)
	}
}

func TestKubeFlags(t *testing.T) {
	none := envOf(nil)
	if _, err := parseFlags([]string{"--kube-subnet-mgr"}, none, io.Discard); err == nil || !strings.Contains(err.Error(), "NODE_NAME") {
		t.Fatalf("no node name: %v", err)
	}
	c, err := parseFlags([]string{"--kube-subnet-mgr", "--kubeconfig-file=/k.conf", "--kube-api-url=https://10.0.0.1:6443"},
		envOf(map[string]string{"NODE_NAME": "n1"}), io.Discard)
	if err != nil || c.Kube.NodeName != "n1" || c.Kube.Kubeconfig != "/k.conf" || c.Kube.APIURL != "https://10.0.0.1:6443" ||
		c.Kube.NetConfPath != "/etc/kube-flannel/net-conf.json" || c.Kube.AnnotationPrefix != "flannel.alpha.coreos.com" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := parseFlags([]string{"--kube-subnet-mgr", "--kube-annotation-prefix=Bad Prefix"},
		envOf(map[string]string{"NODE_NAME": "n1"}), io.Discard); err == nil {
		t.Fatal("accepted a bad annotation prefix")
	}
	// etcd mode does not need the node's name.
	if _, err := parseFlags(nil, none, io.Discard); err != nil {
		t.Fatal(err)
	}
}

func TestPublicIPv6Flag(t *testing.T) {
	c, err := parseFlags([]string{"--public-ipv6=fd00:8::1"}, envOf(nil), io.Discard)
	if err != nil || c.PublicIPv6.String() != "fd00:8::1" {
		t.Fatalf("%v %v", c.PublicIPv6, err)
	}
	c, err = parseFlags(nil, envOf(map[string]string{"FLANNELD_PUBLIC_IPV6": "2001:db8::7"}), io.Discard)
	if err != nil || c.PublicIPv6.String() != "2001:db8::7" {
		t.Fatalf("from the environment: %v %v", c.PublicIPv6, err)
	}
	for _, bad := range []string{"192.168.8.1", "::ffff:192.168.8.1", "ff02::1", "::", "fe80::1%eth0", "nope"} {
		if _, err := parseFlags([]string{"--public-ipv6=" + bad}, envOf(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "--public-ipv6") {
			t.Errorf("--public-ipv6=%s: %v", bad, err)
		}
	}
}

// TestCheckUnderlay: which network configs the node's underlay addresses
// can carry (the IPv6-only refusal is gone; what the data plane cannot do
// is refused with a clear error).
func TestCheckUnderlay(t *testing.T) {
	const (
		v4   = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
		dual = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:10:244::/48","Backend":{"Type":"vxlan"}}`
		v6   = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:10:244::/48","Backend":{"Type":"vxlan"}}`
	)
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}
	ip4, ip6 := netip.MustParseAddr("192.168.8.1"), netip.MustParseAddr("fd00:8::1")
	pfx4, pfx6 := netip.MustParsePrefix("192.168.8.0/24"), netip.MustParsePrefix("fd00:8::/64")
	both := underlay{Link: link, IP: ip4, Prefix: pfx4, PublicIP: ip4, IP6: ip6, Prefix6: pfx6, PublicIPv6: ip6}
	only4 := underlay{Link: link, IP: ip4, Prefix: pfx4, PublicIP: ip4}
	only6 := underlay{Link: link, IP6: ip6, Prefix6: pfx6, PublicIPv6: ip6}
	publicOnly6 := only4
	publicOnly6.PublicIPv6 = ip6 // --public-ipv6 without an address to send from
	for _, tc := range []struct {
		name         string
		cfg          string
		ul           underlay
		wantErr      bool
		want4, want6 bool // families left in the result
	}{
		{"IPv4 network, dual underlay", v4, both, false, true, false},
		{"IPv4 network, IPv6 underlay", v4, only6, true, false, false},
		{"dual-stack, dual underlay", dual, both, false, true, true},
		{"dual-stack, IPv4 underlay (v6-in-v4)", dual, only4, false, true, false},
		{"dual-stack, IPv6 underlay", dual, only6, true, false, false},
		{"dual-stack, --public-ipv6 without an IPv6 address", dual, publicOnly6, true, false, false},
		{"IPv6-only, dual underlay", v6, both, false, false, true},
		{"IPv6-only, IPv6 underlay", v6, only6, false, false, true},
		{"IPv6-only, IPv4 underlay", v6, only4, true, false, false},
	} {
		cfg, err := flannel.ParseConfig([]byte(tc.cfg))
		if err != nil {
			t.Fatalf("%s: %v", tc.cfg, err)
		}
		got, err := checkUnderlay(cfg, tc.ul, zap.NewNop())
		if (err != nil) != tc.wantErr || (err != nil && (!errors.Is(err, errUnderlayFamily) || !strings.Contains(err.Error(), "eth0"))) {
			t.Errorf("%s: checkUnderlay = %v, want error %t naming the underlay", tc.name, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if got.PublicIP.IsValid() != tc.want4 || got.PublicIPv6.IsValid() != tc.want6 || got.IP6.IsValid() != tc.want6 {
			t.Errorf("%s: result %+v, want IPv4 %t IPv6 %t", tc.name, got, tc.want4, tc.want6)
		}
	}
}
