package test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var labPrefixRE = regexp.MustCompile(`lab (wl[0-9a-f]+): state in`)

// assertLabGone checks a lab run left no namespace, pin, state or process.
func assertLabGone(t *testing.T, prefix, runRoot string) {
	t.Helper()
	if m, _ := filepath.Glob("/var/run/netns/" + prefix + "-*"); len(m) > 0 {
		t.Errorf("namespaces left behind: %v", m)
	}
	if _, err := os.Stat("/sys/fs/bpf/weft-lab-" + prefix); err == nil {
		t.Errorf("pins left behind in /sys/fs/bpf/weft-lab-%s", prefix)
	}
	if _, err := os.Stat(filepath.Join(runRoot, prefix)); err == nil {
		t.Errorf("run directory left behind: %s", filepath.Join(runRoot, prefix))
	}
	if out, _ := exec.Command("pgrep", "-f", "weft-lab-"+prefix).Output(); len(out) > 0 {
		t.Errorf("processes left behind: %s", out)
	}
}

// TestLabDemoTwice runs `weft-lab demo` twice in a row, as `make demo` does.
func TestLabDemoTwice(t *testing.T) {
	bin := binaries(t)
	runRoot := t.TempDir()
	for i := 0; i < 2; i++ {
		start := time.Now()
		out, err := exec.Command(filepath.Join(bin, "weft-lab"), "demo", "--bin-dir", bin, "--run-root", runRoot).CombinedOutput()
		if err != nil {
			t.Fatalf("demo run %d: %v\n%s", i+1, err, out)
		}
		m := labPrefixRE.FindSubmatch(out)
		if m == nil {
			t.Fatalf("demo run %d printed no lab prefix:\n%s", i+1, out)
		}
		for _, want := range []string{"of 56 pairs OK", "56 of 56 pairs OK", "MB intact", "COUNTER", "SUBNET"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("demo run %d output lacks %q:\n%s", i+1, want, out)
			}
		}
		t.Logf("demo run %d: %s in %.1fs", i+1, m[1], time.Since(start).Seconds())
		assertLabGone(t, string(m[1]), runRoot)
	}
}

// TestLabDemoKube runs `weft-lab demo --store=kube` (`make demo-kube`): the
// same mixed cluster with Node objects on a real kube-apiserver.
func TestLabDemoKube(t *testing.T) {
	bin := binaries(t)
	runRoot := t.TempDir()
	start := time.Now()
	out, err := exec.Command(filepath.Join(bin, "weft-lab"), "demo", "--store=kube", "--bin-dir", bin, "--run-root", runRoot).CombinedOutput()
	if err != nil {
		t.Fatalf("demo --store=kube: %v\n%s", err, out)
	}
	m := labPrefixRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("demo printed no lab prefix:\n%s", out)
	}
	for _, want := range []string{"kube-apiserver ready", "56 of 56 pairs OK", "MB intact", "COUNTER", "SUBNET"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("demo --store=kube: %s in %.1fs", m[1], time.Since(start).Seconds())
	assertLabGone(t, string(m[1]), runRoot)
	if out, _ := exec.Command("pgrep", "-f", filepath.Join(runRoot, string(m[1]))).Output(); len(out) > 0 {
		t.Errorf("kube-apiserver left behind: %s", out)
	}
}

// TestLabDemoIPv6 runs `weft-lab demo --ipv6`: a dual-stack lab (two
// Weft nodes, a flannel-style dual-stack node, a pod each) prints a ping
// matrix per family and transfers over both.
func TestLabDemoIPv6(t *testing.T) {
	bin := binaries(t)
	runRoot := t.TempDir()
	out, err := exec.Command(filepath.Join(bin, "weft-lab"), "demo", "--ipv6", "--nodes", "2", "--pods", "1",
		"--bin-dir", bin, "--run-root", runRoot).CombinedOutput()
	if err != nil {
		t.Errorf("demo --ipv6: %v\n%s", err, out)
	}
	m := labPrefixRE.FindSubmatch(out)
	if m == nil {
		t.Fatalf("demo printed no lab prefix:\n%s", out)
	}
	for _, want := range []string{"ping matrix over IPv6", "fd00:10:244:", "TCP transfer over IPv6", "SUBNET"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo --ipv6 output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(string(out), "6 of 6 pairs OK"); n != 2 {
		t.Errorf("demo --ipv6: %d matrices with every pair OK, want 2 (IPv4, IPv6):\n%s", n, out)
	}
	assertLabGone(t, string(m[1]), runRoot)
}

// TestLabUpKillDown: `weft-lab up`, then kill -9 of the lab process, then
// `weft-lab down` removes everything.
func TestLabUpKillDown(t *testing.T) {
	bin := binaries(t)
	runRoot := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	up := exec.CommandContext(ctx, filepath.Join(bin, "weft-lab"), "up", "--nodes", "2", "--pods", "1", "--bin-dir", bin, "--run-root", runRoot)
	stdout, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	up.Stderr = up.Stdout
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	var prefix string
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		if m := labPrefixRE.FindStringSubmatch(line); m != nil {
			prefix = m[1]
		}
		if strings.Contains(line, "is up") {
			break
		}
	}
	if prefix == "" || !strings.Contains(strings.Join(lines, "\n"), "is up") {
		up.Process.Kill()
		up.Wait()
		t.Fatalf("lab did not come up:\n%s", strings.Join(lines, "\n"))
	}
	out, err := exec.Command(filepath.Join(bin, "weft-lab"), "status", "--run-root", runRoot, "--bin-dir", bin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node2") || !strings.Contains(string(out), "vxlan") {
		t.Errorf("status: %v\n%s", err, out)
	}

	up.Process.Signal(syscall.SIGKILL)
	up.Wait()
	if m, _ := filepath.Glob("/var/run/netns/" + prefix + "-*"); len(m) == 0 {
		t.Fatalf("kill -9 already removed the lab: the test would prove nothing")
	}
	out, err = exec.Command(filepath.Join(bin, "weft-lab"), "down", "--run-root", runRoot).CombinedOutput()
	if err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	assertLabGone(t, prefix, runRoot)
}
