package main

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// cmdStatus (CNI 1.1) tells the runtime whether ADD can succeed now: the
// node's data plane is pinned and subnet.env is readable.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if _, err := readSubnetEnv(conf.SubnetFile); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("weft-cni not ready (%s): %v", hintNoWeftd, err), "")
	}
	set, err := openDataPlane(conf.PinPath)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("weft-cni not ready (%s): %v", hintNoWeftd, err), "")
	}
	return set.Close()
}
