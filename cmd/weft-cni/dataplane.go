package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/maps"
)

// hintNoWeftd ends the error of every check that fails because the node's
// data plane is missing: that is almost always a node without weftd.
const hintNoWeftd = "weftd not running on this node?"

// node is what this node offers a pod: its subnet and MTU (subnet.env)
// and the pinned maps. Close releases the map handles.
type node struct {
	env  subnetEnv
	maps *maps.Set
}

func (n *node) Close() error { return n.maps.Close() }

// openNode checks that weftd has set the node up, before anything is made:
// subnet.env readable, from_pod pinned, the maps pinned. Failure is
// ErrTryAgainLater: a node whose daemon is (re)starting heals by itself.
func openNode(conf *NetConf) (*node, error) {
	env, err := readSubnetEnv(conf.SubnetFile)
	if err != nil {
		return nil, notReady(err)
	}
	set, err := openDataPlane(conf.PinPath)
	if err != nil {
		return nil, notReady(err)
	}
	return &node{env: env, maps: set}, nil
}

// openDataPlane opens the pinned maps under pinPath after checking that the
// program the plugin attaches is pinned too.
func openDataPlane(pinPath string) (*maps.Set, error) {
	prog := filepath.Join(pinPath, "progs", bpf.WeftProgFromPod)
	if _, err := os.Stat(prog); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no program pinned at %s: %w", prog, os.ErrNotExist)
	} else if err != nil {
		return nil, fmt.Errorf("check pinned program: %w", err)
	}
	set, err := maps.OpenPinned(pinPath)
	if err != nil {
		return nil, fmt.Errorf("open pinned maps: %w", err)
	}
	return set, nil
}

func notReady(err error) error {
	return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("weft data plane not available (%s): %v", hintNoWeftd, err), "")
}

// dataPlaneGone tells DEL that there is nothing to remove from maps or
// pins: the whole data plane (and with it every entry) is already gone.
func dataPlaneGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, maps.ErrNotPinned)
}
