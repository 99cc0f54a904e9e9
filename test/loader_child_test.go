package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

// The end-to-end tests load a Weft node from a separate process that exits
// before any traffic flows: what forwards afterwards runs on pinned objects
// alone, as it must while weftd is down or being upgraded.

const loaderChildEnv = "WEFT_TEST_LOADER_CHILD"

// nodeSpec is everything the child needs to bring up one Weft node.
type nodeSpec struct {
	NSPath    string
	PinPath   string
	Node      loader.NodeConfig
	Endpoints []maps.Endpoint
	Tunnels   []maps.Tunnel
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(loaderChildEnv); spec != "" {
		if err := runLoaderChild(spec); err != nil {
			fmt.Fprintf(os.Stderr, "loader child: %+v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// loadNodeInChild runs the loader in a child process and waits for it to exit.
func loadNodeInChild(spec nodeSpec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), loaderChildEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("loader child for %s: %w: %s", spec.NSPath, err, out)
	}
	return nil
}

func runLoaderChild(raw string) error {
	var spec nodeSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return fmt.Errorf("decode spec: %w", err)
	}
	// This process exits right after, so the thread may stay in the node's
	// namespace: no restore needed.
	runtime.LockOSThread()
	ns, err := netns.GetFromPath(spec.NSPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", spec.NSPath, err)
	}
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns %s: %w", spec.NSPath, err)
	}
	d, err := loader.Load(loader.Options{PinPath: spec.PinPath})
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := loader.SetupNode(d, spec.Node); err != nil {
		return err
	}
	for _, t := range spec.Tunnels {
		if err := d.Maps.Tunnels.Put(t); err != nil {
			return err
		}
	}
	for _, e := range spec.Endpoints {
		if err := d.Maps.Endpoints.Put(e); err != nil {
			return err
		}
		if err := d.AttachPod(int(e.IfIndex)); err != nil {
			return err
		}
	}
	return nil
}
