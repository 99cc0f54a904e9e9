package test

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// TestWeftdBadLeases: one bad value at a time under the subnets prefix.
// Every weftd logs a line naming the key, counts it in /metrics, keeps
// running, and every valid entry keeps forwarding; removing the bad key
// clears the gauge. A valid lease overwritten with garbage keeps its tunnel
// (last known good) instead of black-holing a node that is still alive.
func TestWeftdBadLeases(t *testing.T) {
	c := newLab(t, "")
	n1 := mustAddWeftNode(t, c, "n1")
	n2 := mustAddWeftNode(t, c, "n2")
	if _, err := c.AddFlannelNode("k1", netip.MustParsePrefix("10.244.200.0/24")); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
	}
	cli := etcdClient(t, c)
	victim := fakeNodeN(5) // a valid lease, later overwritten
	putLease(t, cli, c, victim)
	weft := []*lab.Node{n1, n2}
	for _, n := range weft {
		waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
	}
	good := map[string][]maps.Tunnel{}
	for _, n := range weft {
		good[n.Name] = mustTunnels(t, n)
	}
	sub := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	stranger := netip.MustParseAddr("192.168.77.240")
	valid := flannelLease(stranger, fakeNodeN(40).VtepMAC)

	cases := []struct {
		name, key, value string
		want             string // in the logged error
		lastKnownGood    bool   // the key held a valid lease before
	}{
		{name: "MalformedJSON", key: leaseKey(c, sub("10.244.150.0/24")), value: `{"PublicIP":"192.168.77.240","BackendType":"vxlan","BackendData":{`, want: "malformed lease JSON"},
		{name: "InvalidPublicIP", key: leaseKey(c, sub("10.244.151.0/24")), value: strings.Replace(valid, stranger.String(), "192.168.77.300", 1), want: "invalid PublicIP"},
		{name: "IPv6PublicIP", key: leaseKey(c, sub("10.244.152.0/24")), value: strings.Replace(valid, stranger.String(), "fd00::1", 1), want: "invalid PublicIP"},
		{name: "InvalidVtepMAC", key: leaseKey(c, sub("10.244.153.0/24")), value: strings.Replace(valid, fakeNodeN(40).VtepMAC.String(), "0e:fa:zz:00:00:28", 1), want: "invalid VtepMAC"},
		{name: "MulticastVtepMAC", key: leaseKey(c, sub("10.244.154.0/24")), value: strings.Replace(valid, fakeNodeN(40).VtepMAC.String(), "01:00:5e:00:00:28", 1), want: "invalid VtepMAC"},
		// A second key for the victim's subnet (flannel's dual-stack key
		// form): the older lease keeps the subnet, the victim's traffic is
		// not hijacked. Not over a node with pods: k1, like flanneld, takes
		// the newer key's lease for the subnet (and drops the route when the
		// key goes), which would break k1, not Weft.
		{name: "OverlapSameSubnet", key: fmt.Sprintf("%s&fd00:1::-64", leaseKey(c, victim.Subnet)), value: valid, want: "overlaps another lease"},
		// A /23 over the victim's /24. Not over a node with pods: k1, like
		// flanneld, checks no SubnetLen on the leases it receives, installs
		// the /23 and overwrites the <subnet>.0 neighbour it shares with the
		// /24 (and deletes it with the /23), which would break k1, not Weft.
		{name: "OverlapWiderSubnet", key: leaseKey(c, netip.PrefixFrom(victim.Subnet.Addr(), 23).Masked()), value: valid, want: "overlaps another lease"},
		{name: "OutsideNetwork", key: leaseKey(c, sub("10.99.1.0/24")), value: valid, want: "subnet outside Network"},
		{name: "MalformedKey", key: c.EtcdPrefix + "/subnets/10.244.155.0_24", value: valid, want: "malformed subnet key"},
		{name: "ValidLeaseTurnsBad", key: leaseKey(c, victim.Subnet), value: `{"PublicIP":`, want: "malformed lease JSON", lastKnownGood: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reports := map[string]float64{}
			for _, n := range weft {
				reports[n.Name] = metric(t, n, "weft_invalid_lease_reports_total")
			}
			putKey(t, cli, tc.key, tc.value)
			for _, n := range weft {
				waitFor(t, 5*time.Second, func() bool {
					return metric(t, n, "weft_invalid_lease_reports_total") == reports[n.Name]+1
				}, "node %s: weft_invalid_lease_reports_total to go %v -> %v", n.Name, reports[n.Name], reports[n.Name]+1)
				if g := metric(t, n, "weft_invalid_leases"); g != 1 {
					t.Errorf("node %s: weft_invalid_leases %v, want 1", n.Name, g)
				}
				e, ok := findLog(n, "key", tc.key)
				if !ok || !strings.Contains(e.str("msg"), "invalid lease") || !strings.Contains(e.str("error"), tc.want) {
					t.Errorf("node %s: no log line naming key %s with %q (found %v)", n.Name, tc.key, tc.want, e)
				}
				wantKGB := 0.0
				if tc.lastKnownGood {
					wantKGB = 1
				}
				if g := metric(t, n, "weft_tunnels_last_known_good"); g != wantKGB {
					t.Errorf("node %s: weft_tunnels_last_known_good %v, want %v", n.Name, g, wantKGB)
				}
				running(t, c, n)
				if got := mustTunnels(t, n); !sameTunnels(got, good[n.Name]) {
					t.Errorf("node %s: tunnels changed by a bad lease:\n got  %v\n want %v", n.Name, tunnelSet(got), tunnelSet(good[n.Name]))
				}
			}
			pingAll(t, c)

			deleteKey(t, cli, tc.key)
			for _, n := range weft {
				waitFor(t, 5*time.Second, func() bool { return metric(t, n, "weft_invalid_leases") == 0 },
					"node %s: weft_invalid_leases back to 0", n.Name)
			}
			if tc.lastKnownGood { // deleted: now its tunnel goes
				for _, n := range weft {
					waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
				}
			}
		})
	}
}

// pingAll pings every pod from every pod on another node, once.
func pingAll(t *testing.T, c *lab.Cluster) {
	t.Helper()
	for _, from := range c.Nodes {
		for _, to := range c.Nodes {
			if from == to || len(from.Pods) == 0 || len(to.Pods) == 0 {
				continue
			}
			if out, err := ping(from.Pods[0].NSPath, to.Pods[0].IP, 1, 0); err != nil {
				t.Errorf("pod %s -> pod %s: %v\n%s", from.Name, to.Name, err, out)
			}
		}
	}
}

// TestWeftdBadConfig: weftd restarted on a node whose data plane is pinned,
// under a network config it cannot use. It logs the config key and what is
// wrong, counts weft_config_errors_total, does not exit, the pinned data
// plane keeps forwarding, and once the config is fixed the same process
// goes on to ready.
func TestWeftdBadConfig(t *testing.T) {
	c := newLab(t, "")
	n1 := mustAddWeftNode(t, c, "n1")
	n2 := mustAddWeftNode(t, c, "n2")
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
	}
	cli := etcdClient(t, c)
	configKey := c.EtcdPrefix + "/config"
	goodConfig := c.Opts.NetConfig

	cases := []struct{ name, config, want string }{
		{"SubnetLenTooLong", `{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}`, "invalid SubnetLen: 31"},
		{"SubnetLenTooShort", `{"Network":"10.244.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}`, "invalid SubnetLen: 17"},
		{"UnknownBackend", `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}`, `unsupported backend type: \"host-gw\"`},
		{"NoBackend", `{"Network":"10.244.0.0/16","SubnetLen":24}`, "unsupported backend type"},
		{"MalformedJSON", `{"Network":"10.244.0.0/16",`, "malformed network config JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
				t.Fatalf("weftd exit after SIGTERM: %v", err)
			}
			putKey(t, cli, configKey, tc.config)
			startWeftdNoWait(t, c, n1)
			waitFor(t, 10*time.Second, func() bool {
				v, err := n1.Metric("weft_config_errors_total")
				return err == nil && v >= 1
			}, "weft_config_errors_total >= 1")
			e, ok := findLog(n1, "key", configKey, "invalid or unreadable network config")
			if !ok || !strings.Contains(fmt.Sprint(e), strings.ReplaceAll(tc.want, `\"`, `"`)) {
				t.Errorf("no log line naming %s with %q; log:\n%s", configKey, tc.want, n1.Log())
			}
			if code, _, _ := n1.Get("/healthz"); code != 503 {
				t.Errorf("/healthz %d under a bad config, want 503", code)
			}
			running(t, c, n1)
			pingAll(t, c)

			putKey(t, cli, configKey, goodConfig)
			waitReady(t, c, n1, 30*time.Second)
			running(t, c, n1)
		})
	}
	waitTunnelsMatchEtcd(t, cli, c, n1, 2*time.Second)
	waitTunnelsMatchEtcd(t, cli, c, n2, 2*time.Second)
	pingAll(t, c)
}

// TestWeftdBadFlags: every flag weftd validates, given a bad value, makes it
// exit 2 with a message naming the flag, before it changes anything on the
// node: no pins, no weft0 or weftgro0, no subnet.env, no lease.
func TestWeftdBadFlags(t *testing.T) {
	c := newLab(t, "")
	tn, err := c.Lab.AddNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	n := &lab.Node{Name: "n1", Kind: lab.KindWeft, Topo: tn,
		PinPath:    filepath.Join(loader.BPFFSRoot, "weft-test-"+c.Opts.Prefix),
		SubnetFile: filepath.Join(t.TempDir(), "subnet.env")}
	t.Cleanup(func() { loader.Remove(n.PinPath) })
	cli := etcdClient(t, c)
	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"EndpointNoScheme", []string{"--etcd-endpoints", "192.168.77.2:2379"}, "--etcd-endpoints"},
		{"EndpointBadScheme", []string{"--etcd-endpoints", "ftp://192.168.77.2:2379"}, "--etcd-endpoints"},
		{"EndpointEmpty", []string{"--etcd-endpoints", ""}, "--etcd-endpoints"},
		{"EndpointOneBadOfTwo", []string{"--etcd-endpoints", "http://192.168.77.2:2379,nohost"}, "--etcd-endpoints"},
		{"PrefixRelative", []string{"--etcd-prefix", "coreos.com/network"}, "--etcd-prefix"},
		{"CertWithoutKey", []string{"--etcd-certfile", junk}, "--etcd-keyfile"},
		{"KeyWithoutCert", []string{"--etcd-keyfile", junk}, "--etcd-certfile"},
		{"CAFileMissing", []string{"--etcd-cafile", "/nonexistent/ca.pem"}, "/nonexistent/ca.pem"},
		{"CertFileMissing", []string{"--etcd-certfile", "/nonexistent/c.pem", "--etcd-keyfile", junk}, "/nonexistent/c.pem"},
		{"CAFileNotPEM", []string{"--etcd-cafile", junk}, "--etcd-cafile"},
		{"IfaceMissing", []string{"--iface", "nosuchdev0"}, "nosuchdev0"},
		{"IfaceAddressNotLocal", []string{"--iface", "192.168.77.99"}, "192.168.77.99"},
		{"PublicIPMalformed", []string{"--public-ip", "192.168.77"}, "--public-ip"},
		{"PublicIPv6", []string{"--public-ip", "fd00::1"}, "--public-ip"},
		{"VtepMACMalformed", []string{"--vtep-mac", "0e:00:00:00:00"}, "--vtep-mac"},
		{"VtepMACMulticast", []string{"--vtep-mac", "01:00:5e:00:00:01"}, "--vtep-mac"},
		{"VtepMAC8Bytes", []string{"--vtep-mac", "0e:00:00:00:00:00:00:01"}, "--vtep-mac"},
		{"LeaseTTLTooShort", []string{"--subnet-lease-ttl", "1s"}, "--subnet-lease-ttl"},
		{"LeaseTTLNotADuration", []string{"--subnet-lease-ttl", "soon"}, "subnet-lease-ttl"},
		{"SubnetFileEmpty", []string{"--subnet-file", ""}, "--subnet-file"},
		{"PinPathRelative", []string{"--pin-path", "weft"}, "--pin-path"},
		{"PinPathEmpty", []string{"--pin-path", ""}, "--pin-path"},
		{"DecapUnknown", []string{"--decap", "skb"}, "--decap"},
		{"MetricsAddrNoPort", []string{"--metrics-addr", "192.168.77.11"}, "--metrics-addr"},
		{"LogLevelUnknown", []string{"--log-level", "chatty"}, "--log-level"},
		{"GRODeviceNotBool", []string{"--gro-device=maybe"}, "gro-device"},
		{"UnknownFlag", []string{"--etcd-endpoint", "http://192.168.77.2:2379"}, "etcd-endpoint"},
		{"PositionalArgument", []string{"eth0"}, "unexpected arguments"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--net=" + tn.NSPath, "--", filepath.Join(c.Opts.BinDir, "weftd")}, c.WeftdArgs(n, tc.args...)...)
			cmd := exec.Command("nsenter", args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			cmd.WaitDelay = time.Second
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("weftd %v still running after 10s:\n%s", tc.args, stderr.String())
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("weftd %v: %v, want exit status 2\n%s", tc.args, err, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("weftd %v: stderr does not name %q:\n%s", tc.args, tc.want, stderr.String())
			}
			if _, err := os.Stat(n.PinPath); !os.IsNotExist(err) {
				t.Errorf("weftd %v created %s", tc.args, n.PinPath)
				loader.Remove(n.PinPath)
			}
			if _, err := os.Stat(n.SubnetFile); !os.IsNotExist(err) {
				t.Errorf("weftd %v wrote %s", tc.args, n.SubnetFile)
				os.Remove(n.SubnetFile)
			}
			for _, dev := range []string{loader.DefaultHostDevice, loader.DefaultGRODevice} {
				if nodeLink(t, n, dev) != nil {
					t.Errorf("weftd %v created %s", tc.args, dev)
				}
			}
			if ls := etcdLeases(t, cli, c); len(ls) != 0 {
				t.Errorf("weftd %v wrote a lease: %+v", tc.args, ls)
			}
		})
	}
}
