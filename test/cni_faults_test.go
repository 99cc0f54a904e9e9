package test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/loader"
)

// cniErrCodeNoAddress is weft-cni's plugin-specific code for an exhausted
// node subnet (cmd/weft-cni/ipam.go).
const cniErrCodeNoAddress = 100

// wantCNIError asserts err carries a CNI error with the code and a message
// (msg + details) containing every fragment.
func wantCNIError(t *testing.T, err error, code uint, fragments ...string) {
	t.Helper()
	var cerr *types.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("err = %v, want a CNI error with code %d", err, code)
	}
	if cerr.Code != code {
		t.Errorf("CNI error code %d (%s), want %d", cerr.Code, cerr.Error(), code)
	}
	for _, f := range fragments {
		if !strings.Contains(cerr.Error(), f) {
			t.Errorf("CNI error %q does not mention %q", cerr.Error(), f)
		}
	}
	t.Logf("error as the runtime sees it: %v", err)
}

// TestCNIAddFaults: every ADD that cannot succeed returns a CNI error
// result with a clear message and leaves nothing half-made.
func TestCNIAddFaults(t *testing.T) {
	c := newCNILab(t, 1)
	n := c.nodes[0]
	pod := cniPodNS(t, c, "fault")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	id := strings.Repeat("f", 64)

	afterwards := func(t *testing.T) {
		t.Helper()
		n.assertClean(t)
		if cniPodHasIf(t, pod, "eth0") {
			t.Error("pod netns holds eth0 after a failed ADD")
		}
	}

	t.Run("MissingNetns", func(t *testing.T) {
		_, err := n.add(ctx, n.conflist(t, "1.0.0", nil), cniRuntimeConf(id, filepath.Join(filepath.Dir(pod), c.lab.Prefix+"-gone")))
		wantCNIError(t, err, types.ErrInvalidNetNS, "open pod netns", c.lab.Prefix+"-gone")
		afterwards(t)
	})

	t.Run("InvalidJSON", func(t *testing.T) {
		bad := []byte(`{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-cni",}]}`)
		// A runtime refuses such a file before any plugin runs...
		if _, err := libcni.ConfListFromBytes(bad); err == nil {
			t.Error("libcni parsed invalid JSON")
		}
		// ...but the plugin must cope with whatever reaches its stdin:
		// call it through invoke, the layer under libcni.
		var err error
		n.node.Do(func() error {
			_, err = invoke.ExecPluginWithResult(ctx, filepath.Join(c.binDir, "weft-cni"),
				[]byte(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni",`),
				&invoke.Args{Command: "ADD", ContainerID: id, NetNS: pod, IfName: "eth0", Path: c.binDir}, nil)
			return nil
		})
		wantCNIError(t, err, types.ErrDecodingFailure, "network config")
		afterwards(t)
	})

	for _, wrong := range []map[string]any{{"pinPath": 42}, {"dataDir": []string{"/x"}}, {"subnetFile": map[string]any{}}} {
		var key string
		for k := range wrong {
			key = k
		}
		t.Run("WrongType_"+key, func(t *testing.T) {
			_, err := n.add(ctx, n.conflist(t, "1.0.0", wrong), cniRuntimeConf(id, pod))
			wantCNIError(t, err, types.ErrDecodingFailure, "parse weft-cni network config", key)
			afterwards(t)
		})
	}

	for _, v := range []string{"0.2.0", "9.9.9"} {
		t.Run("UnsupportedVersion_"+v, func(t *testing.T) {
			_, err := n.add(ctx, n.conflist(t, v, nil), cniRuntimeConf(id, pod))
			wantCNIError(t, err, types.ErrIncompatibleCNIVersion, "incompatible CNI versions", v)
			afterwards(t)
		})
	}

	t.Run("NoDataPlane", func(t *testing.T) {
		empty := filepath.Join(c.pinRoot, "empty") // a pin path weftd never filled
		if err := os.MkdirAll(empty, 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := n.add(ctx, n.conflist(t, "1.0.0", map[string]any{"pinPath": empty}), cniRuntimeConf(id, pod))
		wantCNIError(t, err, types.ErrTryAgainLater, "weftd not running on this node?", empty)
		afterwards(t)
	})

	t.Run("NoSubnetFile", func(t *testing.T) {
		missing := n.subnetFile + ".missing"
		_, err := n.add(ctx, n.conflist(t, "1.0.0", map[string]any{"subnetFile": missing}), cniRuntimeConf(id, pod))
		wantCNIError(t, err, types.ErrTryAgainLater, "weftd not running on this node?", missing)
		afterwards(t)
	})

	t.Run("SubnetExhausted", func(t *testing.T) {
		// A /29 in subnet.env: .2 to .6, five pods.
		small := netip.MustParsePrefix("10.244.1.0/29")
		n.writeSubnetEnv(t, netip.MustParsePrefix("10.244.0.0/16"), small, 1450)
		t.Cleanup(func() { n.writeSubnetEnv(t, netip.MustParsePrefix("10.244.0.0/16"), n.subnet, 1450) })
		var added []*libcni.RuntimeConf
		t.Cleanup(func() {
			for _, rt := range added {
				n.del(ctx, n.conflist(t, "1.0.0", nil), rt)
			}
		})
		for i := 0; i < 5; i++ {
			rt := cniRuntimeConf(fmt.Sprintf("%s%d", strings.Repeat("e", 40), i), cniPodNS(t, c, fmt.Sprintf("full%d", i)))
			r, err := n.add(ctx, n.conflist(t, "1.0.0", nil), rt)
			if err != nil {
				t.Fatalf("add %d of 5: %v", i+1, err)
			}
			added = append(added, rt)
			if ip := cniPodIP(t, cniResult(t, r)); !small.Contains(ip) {
				t.Errorf("pod %d got %s, outside %s", i, ip, small)
			}
		}
		before := n.leftovers(t)
		_, err := n.add(ctx, n.conflist(t, "1.0.0", nil), cniRuntimeConf(id, pod))
		wantCNIError(t, err, cniErrCodeNoAddress, "10.244.1.0/29", "exhausted")
		if after := n.leftovers(t); !slices.Equal(before, after) {
			t.Errorf("failed ADD changed the node:\nbefore %v\nafter  %v", before, after)
		}
		if cniPodHasIf(t, pod, "eth0") {
			t.Error("pod netns holds eth0 after a failed ADD")
		}
		for _, rt := range added {
			if err := n.del(ctx, n.conflist(t, "1.0.0", nil), rt); err != nil {
				t.Fatal(err)
			}
		}
		added = nil
		afterwards(t)
	})

	// After all that, the node still wires a pod.
	t.Run("StillWorks", func(t *testing.T) {
		rt := cniRuntimeConf(id, pod)
		if _, err := n.add(ctx, n.conflist(t, "1.0.0", nil), rt); err != nil {
			t.Fatalf("add: %v", err)
		}
		if err := cniPing(pod, loader.HostIP(n.subnet), 1); err != nil {
			t.Errorf("pod -> node: %v", err)
		}
		if err := n.del(ctx, n.conflist(t, "1.0.0", nil), rt); err != nil {
			t.Fatal(err)
		}
		afterwards(t)
	})
}
