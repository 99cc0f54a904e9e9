package main

import (
	"bufio"
	"compress/gzip"
	"os"
	"strings"
	"testing"
)

// The probe's answer agrees with the kernel's build configuration where the
// kernel publishes it (/proc/config.gz): on this project's machines
// CONFIG_NETKIT is not set, and the answer is "no" with that reason.
func TestNetkitSupport(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a private network namespace)")
	}
	ok, reason := netkitSupport()
	t.Logf("netkit: %v %s", ok, reason)
	if !ok && reason == "" {
		t.Error("no netkit, and no reason given")
	}
	if ok && reason != "" {
		t.Errorf("netkit available, yet a reason: %q", reason)
	}
	set, known := kernelConfig(t, "CONFIG_NETKIT")
	if !known {
		t.Logf("no /proc/config.gz: the answer cannot be cross-checked on this kernel")
		return
	}
	if ok != set {
		t.Errorf("netkit probe says %v (%s), the kernel's config says CONFIG_NETKIT=%v", ok, reason, set)
	}
	if !set && !strings.Contains(reason, "CONFIG_NETKIT") {
		t.Errorf("reason %q does not name CONFIG_NETKIT", reason)
	}
	// The probe leaves nothing in this namespace.
	for _, name := range []string{"nkprobe0", "nkprobe1"} {
		if _, err := os.Stat("/sys/class/net/" + name); err == nil {
			t.Errorf("probe link %s left in the caller's namespace", name)
		}
	}
}

// kernelConfig reads one boolean option from /proc/config.gz; known is
// false when the kernel does not publish its config.
func kernelConfig(t *testing.T, opt string) (set, known bool) {
	t.Helper()
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return false, false
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("read /proc/config.gz: %v", err)
	}
	sc := bufio.NewScanner(z)
	for sc.Scan() {
		switch line := sc.Text(); {
		case line == opt+"=y":
			return true, true
		case line == "# "+opt+" is not set":
			return false, true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /proc/config.gz: %v", err)
	}
	return false, true // absent from the config: not built
}
