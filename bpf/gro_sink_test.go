package bpf_test

import "testing"

// TestGROSinkDropsEverything: whatever the kernel's vxlan socket hands to
// weftgro0 (VXLAN from_underlay left to the kernel) is dropped and counted,
// never forwarded unvalidated.
func TestGROSinkDropsEverything(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"a valid decapsulated pod frame", podFrame(t, pod1, pkt{dst: remotePodB})},
		{"a minimal Ethernet frame", make([]byte, 14)},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.run("gro_sink", c.frame)
			r.check(t, tcActShot, counters("drop_gro_device"))
		})
	}
}
