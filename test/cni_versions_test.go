package test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/loader"
)

// TestCNISpecVersions: runtimes speaking 0.3.1, 0.4.0, 1.0.0 and 1.1.0 each
// get a result of their version that says the same thing; CHECK where the
// spec has it; VERSION lists them; STATUS and GC for 1.1.0 runtimes.
func TestCNISpecVersions(t *testing.T) {
	c := newCNILab(t, 1)
	n := c.nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("Version", func(t *testing.T) {
		var info []string
		err := n.node.Do(func() error {
			pi, err := n.cni.GetVersionInfo(ctx, "weft-cni")
			if err == nil {
				info = pi.SupportedVersions()
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			if !slices.Contains(info, v) {
				t.Errorf("VERSION lists %v, missing %s", info, v)
			}
		}
	})

	for i, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run("Spec"+v, func(t *testing.T) {
			pod := cniPodNS(t, c, fmt.Sprintf("v%d", i))
			rt := cniRuntimeConf(fmt.Sprintf("%s%d", strings.Repeat("a", 40), i), pod)
			list := n.conflist(t, v, nil)
			r, err := n.add(ctx, list, rt)
			if err != nil {
				t.Fatalf("add: %v", err)
			}
			if r.Version() != v {
				t.Errorf("result version %s, want %s", r.Version(), v)
			}
			p := &cniPod{node: n, name: "v" + v, ns: pod, rt: rt, res: cniResult(t, r)}
			p.ip = cniPodIP(t, p.res)
			checkCNIResult(t, p, v >= "1.0.0")
			if err := cniPing(pod, loader.HostIP(n.subnet), 1); err != nil {
				t.Errorf("pod -> node: %v", err)
			}
			if v != "0.3.1" { // CHECK arrived with 0.4.0
				if err := n.check(ctx, list, rt); err != nil {
					t.Errorf("check: %v", err)
				}
			}
			if err := n.del(ctx, list, rt); err != nil {
				t.Fatalf("del: %v", err)
			}
			n.assertClean(t)
		})
	}

	t.Run("Status", func(t *testing.T) {
		if err := n.status(ctx, n.conflist(t, "1.1.0", nil)); err != nil {
			t.Errorf("status of a ready node: %v", err)
		}
		empty := filepath.Join(c.pinRoot, "empty")
		err := n.status(ctx, n.conflist(t, "1.1.0", map[string]any{"pinPath": empty}))
		wantCNIError(t, err, types.ErrPluginNotAvailable, "weftd not running on this node?")
		err = n.status(ctx, n.conflist(t, "1.1.0", map[string]any{"subnetFile": n.subnetFile + ".missing"}))
		wantCNIError(t, err, types.ErrPluginNotAvailable, "subnet")
	})

	// GC: the runtime lists the attachments it still has; weft-cni removes
	// the others, including ones the runtime's own cache forgot (here: added
	// through another libcni cache, so only the plugin's records know them).
	t.Run("GC", func(t *testing.T) {
		list := n.conflist(t, "1.1.0", nil)
		keep := cniRuntimeConf(strings.Repeat("b", 40)+"keep", cniPodNS(t, c, "gckeep"))
		lost := cniRuntimeConf(strings.Repeat("b", 40)+"lost", cniPodNS(t, c, "gclost"))
		if _, err := n.add(ctx, list, keep); err != nil {
			t.Fatal(err)
		}
		forgetful := cniConfig(c.binDir, t.TempDir())
		if err := n.node.Do(func() error { _, err := forgetful.AddNetworkList(ctx, list, lost); return err }); err != nil {
			t.Fatal(err)
		}
		err := n.node.Do(func() error {
			return n.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.ContainerID, IfName: "eth0"}}})
		})
		if err != nil {
			t.Fatalf("gc: %v", err)
		}
		if cniPodHasIf(t, lost.NetNS, "eth0") {
			t.Error("GC left the unlisted attachment")
		}
		if err := n.check(ctx, list, keep); err != nil {
			t.Errorf("GC broke the listed attachment: %v", err)
		}
		if err := n.del(ctx, list, keep); err != nil {
			t.Fatal(err)
		}
		n.assertClean(t)
	})
}
