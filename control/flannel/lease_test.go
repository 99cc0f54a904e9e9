package flannel

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// goldenLease is what flanneld (pkg/lease LeaseAttrs through encoding/json,
// vxlanLeaseAttrs for BackendData) writes for an IPv4 vxlan node.
const goldenLease = `{"PublicIP":"192.168.8.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1a"}}`

func TestLeaseJSONMatchesFlannel(t *testing.T) {
	mac, _ := net.ParseMAC("8e:5e:4e:3c:2b:1a")
	a, err := NewVXLANAttrs(netip.MustParseAddr("192.168.8.1"), 1, mac)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalLeaseAttrs(a)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != goldenLease {
		t.Fatalf("marshal:\n got %s\nwant %s", b, goldenLease)
	}

	// Round trip: flannel's bytes decode to the same attrs and re-encode
	// to the same bytes.
	back, err := ParseLeaseAttrs([]byte(goldenLease))
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseVXLANData(back.BackendData)
	if err != nil {
		t.Fatal(err)
	}
	if back.PublicIP != a.PublicIP || d.VNI != 1 || d.VtepMAC.String() != "8e:5e:4e:3c:2b:1a" || back.PublicIPv6.IsValid() {
		t.Fatalf("decoded %+v %+v", back, d)
	}
	again, err := MarshalLeaseAttrs(back)
	if err != nil || string(again) != goldenLease {
		t.Fatalf("re-marshal: %s %v", again, err)
	}
}

func TestParseLeaseAttrsFlannelVariants(t *testing.T) {
	for name, v := range map[string]string{
		// flannel before dual-stack (v0.10-v0.13) had no PublicIPv6 field.
		"pre dual-stack": `{"PublicIP":"10.0.0.2","BackendType":"vxlan","BackendData":{"VtepMAC":"8e:5e:4e:3c:2b:1a","VNI":1}}`,
		"dual-stack": `{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan",` +
			`"BackendData":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1a"},"BackendV6Data":{"VNI":1,"VtepMAC":"8e:5e:4e:3c:2b:1b"}}`,
		"whitespace and an unknown field": "{ \"PublicIP\": \"10.0.0.2\", \"Extra\": 1,\n \"BackendType\": \"vxlan\", \"BackendData\": { \"VNI\": 1, \"VtepMAC\": \"8E:5E:4E:3C:2B:1A\" } }",
	} {
		t.Run(name, func(t *testing.T) {
			a, err := ParseLeaseAttrs([]byte(v))
			if err != nil {
				t.Fatal(err)
			}
			d, err := ParseVXLANData(a.BackendData)
			if err != nil {
				t.Fatal(err)
			}
			if a.PublicIP.String() != "10.0.0.2" || d.VtepMAC.String() != "8e:5e:4e:3c:2b:1a" {
				t.Fatalf("%+v %+v", a, d)
			}
		})
	}
}

func TestParseSubnetKey(t *testing.T) {
	good := map[string]string{
		"10.244.1.0-24":                 "10.244.1.0/24",
		"10.244.1.128-25":               "10.244.1.128/25",
		"10.244.1.0-24&fd00:0:0:1::-64": "10.244.1.0/24",
	}
	for k, want := range good {
		v4, _, err := ParseSubnetKey(k)
		if err != nil || v4.String() != want {
			t.Errorf("ParseSubnetKey(%q) = %v, %v; want %s", k, v4, err, want)
		}
	}
	for _, k := range []string{
		"", "10.244.1.0", "10.244.1.0-", "10.244.1.0-024", "10.244.1.0-+24", "10.244.1.0-33",
		"10.244.1.1-24", "10.244.01.0-24", "10.244.1.0-24x", "x10.244.1.0-24", "fd00::-64",
		"::ffff:10.244.1.0-24", "10.244.1.0-24&", "10.244.1.0-24&10.0.0.0-8", "10.244.1.0/24",
		"10.244.1.0-24&fd00::1-64",
	} {
		if _, _, err := ParseSubnetKey(k); !errors.Is(err, ErrLeaseKey) {
			t.Errorf("ParseSubnetKey(%q) = %v, want ErrLeaseKey", k, err)
		}
	}
	if k := SubnetKey(netip.MustParsePrefix("10.244.1.0/24")); k != "10.244.1.0-24" {
		t.Fatal(k)
	}
}

func testConfig(t *testing.T) *NetworkConfig {
	t.Helper()
	c, err := ParseConfig([]byte(`{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const pfx = "/coreos.com/network"

func lease(sn, value string, rev int64) KV {
	return KV{Key: pfx + "/subnets/" + sn, Value: []byte(value), CreateRevision: rev, ModRevision: rev}
}

func value(ip, mac string) string {
	return `{"PublicIP":"` + ip + `","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"` + mac + `"}}`
}

func TestParseLeaseErrors(t *testing.T) {
	c := testConfig(t)
	good := value("192.168.8.2", "8e:00:00:00:00:02")
	cases := []struct {
		name string
		kv   KV
		is   error
	}{
		{"malformed JSON", lease("10.244.2.0-24", `{"PublicIP":"192.168.8.2",`, 2), ErrLeaseJSON},
		{"JSON array", lease("10.244.2.0-24", `[1,2]`, 2), ErrLeaseJSON},
		{"PublicIP garbage", lease("10.244.2.0-24", value("192.168.8.300", "8e:00:00:00:00:02"), 2), ErrPublicIP},
		{"PublicIP IPv6", lease("10.244.2.0-24", value("fd00::2", "8e:00:00:00:00:02"), 2), ErrPublicIP},
		{"PublicIP missing", lease("10.244.2.0-24", `{"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"8e:00:00:00:00:02"}}`, 2), ErrPublicIP},
		{"PublicIP unspecified", lease("10.244.2.0-24", value("0.0.0.0", "8e:00:00:00:00:02"), 2), ErrPublicIP},
		{"VtepMAC garbage", lease("10.244.2.0-24", value("192.168.8.2", "8e:zz:00:00:00:02"), 2), ErrVtepMAC},
		{"VtepMAC 8 bytes", lease("10.244.2.0-24", value("192.168.8.2", "8e:00:00:00:00:00:00:02"), 2), ErrVtepMAC},
		{"VtepMAC multicast", lease("10.244.2.0-24", value("192.168.8.2", "ff:ff:ff:ff:ff:ff"), 2), ErrVtepMAC},
		{"VtepMAC zero", lease("10.244.2.0-24", value("192.168.8.2", "00:00:00:00:00:00"), 2), ErrVtepMAC},
		{"VtepMAC missing", lease("10.244.2.0-24", `{"PublicIP":"192.168.8.2","BackendType":"vxlan","BackendData":{"VNI":1}}`, 2), ErrVtepMAC},
		{"BackendData missing", lease("10.244.2.0-24", `{"PublicIP":"192.168.8.2","BackendType":"vxlan"}`, 2), ErrLeaseJSON},
		{"host-gw lease", lease("10.244.2.0-24", `{"PublicIP":"192.168.8.2","BackendType":"host-gw"}`, 2), ErrBackendType},
		{"outside Network", lease("10.99.2.0-24", good, 2), ErrOutsideNetwork},
		{"wider than Network", lease("10.0.0.0-8", good, 2), ErrOutsideNetwork},
		{"wrong size", lease("10.244.2.0-25", good, 2), ErrSubnetSize},
		{"garbage key", lease("hello", good, 2), ErrLeaseKey},
		{"key with host bits", lease("10.244.2.1-24", good, 2), ErrLeaseKey},
		{"key not under subnets/", KV{Key: pfx + "/config2", Value: []byte(good)}, ErrLeaseKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ParseLease(pfx, tc.kv)
			var le *LeaseError
			if !errors.As(err, &le) || !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want a *LeaseError wrapping %v", err, tc.is)
			}
			if le.Key != tc.kv.Key || !strings.Contains(err.Error(), tc.kv.Key) {
				t.Fatalf("error %q does not name key %s", err, tc.kv.Key)
			}
		})
	}
	l, err := c.ParseLease(pfx, lease("10.244.2.0-24", good, 2))
	if err != nil || l.Subnet.String() != "10.244.2.0/24" || l.PublicIP().String() != "192.168.8.2" ||
		l.VXLAN.VtepMAC.String() != "8e:00:00:00:00:02" {
		t.Fatalf("%+v %v", l, err)
	}
}

func TestParseLeasesOverlap(t *testing.T) {
	c := testConfig(t)
	v := func(n int) string { return value("192.168.8.9", "8e:00:00:00:00:0"+string(rune('0'+n))) }
	kvs := []KV{
		lease("10.244.2.0-24", v(2), 5),
		lease("10.244.3.0-24", v(3), 6),
		// A dual-stack key for a subnet that is already leased: the newer loses.
		lease("10.244.2.0-24&fd00::-64", v(4), 9),
		// A /25 inside 10.244.3.0/24 and a /23 over 10.244.2.0/24 and 10.244.3.0/24.
		lease("10.244.3.128-25", v(5), 3),
		lease("10.244.2.0-23", v(6), 1),
		// Bad JSON at a key that overlaps nothing stays just bad JSON.
		lease("10.244.7.0-24", "{", 7),
	}
	valid, invalid := c.ParseLeases(pfx, kvs)
	var keys []string
	for _, l := range valid {
		keys = append(keys, strings.TrimPrefix(l.Key, pfx+"/subnets/"))
	}
	if got := strings.Join(keys, " "); got != "10.244.2.0-24 10.244.3.0-24" {
		t.Fatalf("valid = %s", got)
	}
	want := map[string][]error{
		"10.244.2.0-24&fd00::-64": {ErrOverlap},
		"10.244.3.128-25":         {ErrSubnetSize, ErrOverlap},
		"10.244.2.0-23":           {ErrSubnetSize, ErrOverlap},
		"10.244.7.0-24":           {ErrLeaseJSON},
	}
	if len(invalid) != len(want) {
		t.Fatalf("invalid = %v", invalid)
	}
	for _, e := range invalid {
		name := strings.TrimPrefix(e.Key, pfx+"/subnets/")
		for _, is := range want[name] {
			if !errors.Is(e, is) {
				t.Errorf("%s: %v does not wrap %v", name, e, is)
			}
		}
		if name == "10.244.7.0-24" && errors.Is(e, ErrOverlap) {
			t.Errorf("%s: %v", name, e)
		}
	}
	// The inputs are untouched.
	if _, err := c.ParseLease(pfx, kvs[3]); errors.Is(err, ErrOverlap) {
		t.Fatal("ParseLease alone must not know about overlaps")
	}
}

func TestVXLANDataJSON(t *testing.T) {
	mac, _ := net.ParseMAC("0a:00:00:00:00:01")
	b, err := json.Marshal(VXLANData{VNI: 7, VtepMAC: mac})
	if err != nil || string(b) != `{"VNI":7,"VtepMAC":"0a:00:00:00:00:01"}` {
		t.Fatalf("%s %v", b, err)
	}
	// flanneld writes uint16(VNI); so do we, or flannel nodes could not
	// decode our lease.
	a, err := NewVXLANAttrs(netip.MustParseAddr("10.0.0.1"), 70000, mac)
	if err != nil || string(a.BackendData) != `{"VNI":4464,"VtepMAC":"0a:00:00:00:00:01"}` {
		t.Fatalf("%s %v", a.BackendData, err)
	}
	if _, err := json.Marshal(VXLANData{VNI: 7}); err == nil {
		t.Fatal("marshalled a lease without a VtepMAC")
	}
}
