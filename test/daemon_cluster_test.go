package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/weftnet/weft/test/lab"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds weftd, weftctl and weft-cni once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "weft-test-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir+"/", "../cmd/...").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/...: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// newLab starts a lab cluster (etcd on the underlay, no nodes yet) that is
// torn down when the test ends; weftd logs are printed if the test failed.
// netConfig "" means the default vxlan config for 10.244.0.0/16.
func newLab(t *testing.T, netConfig string) *lab.Cluster {
	t.Helper()
	return startLab(t, lab.Options{NetConfig: netConfig})
}

// startLab starts a lab with opts (BinDir, RunDir and Logf filled in) and
// tears it down when the test ends, printing the weftd logs of a failed test.
func startLab(t *testing.T, opts lab.Options) *lab.Cluster {
	t.Helper()
	opts.BinDir, opts.RunDir, opts.Logf = binaries(t), filepath.Join(t.TempDir(), "run"), t.Logf
	c, err := lab.New(opts)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				if l := n.Log(); l != "" {
					if len(l) > 8000 {
						l = "...\n" + l[len(l)-8000:]
					}
					t.Logf("weftd log of %s:\n%s", n.Name, l)
				}
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return c
}

// mustAddWeftNode adds a node running weftd.
func mustAddWeftNode(t *testing.T, c *lab.Cluster, name string, extra ...string) *lab.Node {
	t.Helper()
	n, err := c.AddWeftNode(name, extra...)
	if err != nil {
		t.Fatalf("add weft node %s: %v", name, err)
	}
	return n
}
