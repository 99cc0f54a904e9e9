package flannel

import (
	"testing"
)

// Every key ParseSubnetKey accepts is the one flannel's MakeSubnetKey (and
// SubnetKeyDual) writes for what it parsed: one spelling per subnet pair,
// so two keys can never name the same pair.
func FuzzSubnetKeyRoundTrip(f *testing.F) {
	for _, s := range []string{
		"10.244.1.0-24", "10.5.72.0-24&fc00:10:244:1::-64", "0.0.0.0-0&fc00:10:244:1::-64",
		"10.12.13.0-24&fd00:12:13::-56", "0.0.0.0-0", "10.0.0.0-24&FC00::-64", "1.2.3.0-24&::1.2.3.4-128",
		"10.0.0.0-8&fc00:0:0:1:0:0:0:0-64", "255.255.255.255-32&ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff-128",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		v4, v6, err := ParseSubnetKey(key)
		if err != nil {
			return
		}
		if !v4.IsValid() && !v6.IsValid() {
			t.Fatalf("%q parsed to no subnet", key)
		}
		if got := SubnetKeyDual(v4, v6); got != key {
			t.Fatalf("%q parsed to %v %v, which is written %q", key, v4, v6, got)
		}
	})
}

// A lease value DecodeLeaseAttrs accepts marshals to bytes that decode to
// the same attrs and marshal to the same bytes again.
func FuzzLeaseAttrsRoundTrip(f *testing.F) {
	for _, s := range []string{
		goldenLease, flannelDualLease, flannelV6OnlyLease, flannelBareLease,
		`{"PublicIPv6":"fd00::2","BackendType":"vxlan"}`, `{"PublicIP":"0.0.0.0","PublicIPv6":"::ffff:1.2.3.4"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeLeaseAttrs(b)
		if err != nil {
			return
		}
		out, err := MarshalLeaseAttrs(a)
		if err != nil {
			t.Fatalf("decoded %s to %+v, which does not marshal: %v", b, a, err)
		}
		back, err := DecodeLeaseAttrs(out)
		if err != nil || back.PublicIP != a.PublicIP || back.PublicIPv6 != a.PublicIPv6 || back.BackendType != a.BackendType {
			t.Fatalf("%s -> %s -> %+v %v", b, out, back, err)
		}
		again, err := MarshalLeaseAttrs(back)
		if err != nil || string(again) != string(out) {
			t.Fatalf("%s re-marshals to %s", out, again)
		}
	})
}
