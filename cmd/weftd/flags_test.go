package main

import (
	"errors"
	"io"
	"strings"
	"testing"

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

func TestCheckFamilies(t *testing.T) {
	for _, tc := range []struct {
		json    string
		wantErr bool
	}{
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, false},
		{`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:10:244::/48","Backend":{"Type":"vxlan"}}`, false},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:10:244::/48","Backend":{"Type":"vxlan"}}`, true},
	} {
		cfg, err := flannel.ParseConfig([]byte(tc.json))
		if err != nil {
			t.Fatalf("%s: %v", tc.json, err)
		}
		err = checkFamilies(cfg, zap.NewNop())
		if (err != nil) != tc.wantErr || (tc.wantErr && !errors.Is(err, errIPv6Only)) {
			t.Errorf("%s: checkFamilies = %v, want error %t", tc.json, err, tc.wantErr)
		}
	}
}
