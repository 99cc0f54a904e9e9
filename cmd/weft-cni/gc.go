package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// cmdGC (CNI 1.1) removes every attachment of this network the runtime no
// longer lists as valid, by the same teardown as DEL.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	recs, err := listRecords(conf.DataDir)
	errs := []error{err}
	for _, r := range recs {
		if r.Network != conf.Name || valid[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		errs = append(errs, teardown(conf, r.ContainerID, r.IfName))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	return nil
}
