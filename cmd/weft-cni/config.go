package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/loader"
)

// Defaults for the optional configuration keys.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env" // flannel's, written by weftd
	DefaultPinPath    = loader.DefaultPinPath
	DefaultDataDir    = "/var/lib/cni/weft"
)

// NetConf is the plugin's network configuration. Only the standard keys are
// required: {"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}. The
// three paths exist so several lab nodes can share one machine.
type NetConf struct {
	types.PluginConf

	// SubnetFile is flannel's subnet.env (flannel's own CNI uses the same key).
	SubnetFile string `json:"subnetFile,omitempty"`
	// PinPath is where weftd pinned the maps and programs.
	PinPath string `json:"pinPath,omitempty"`
	// DataDir holds the IPAM state and one record per attachment.
	DataDir string `json:"dataDir,omitempty"`
}

// loadConf decodes and validates stdin. skel has already checked that the
// JSON parses, that "name" is set and that cniVersion is one we support;
// here wrong field types and bad paths become clear CNI errors.
func loadConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("parse weft-cni network config: %v", err), "")
	}
	if conf.SubnetFile == "" {
		conf.SubnetFile = DefaultSubnetFile
	}
	if conf.PinPath == "" {
		conf.PinPath = DefaultPinPath
	}
	if conf.DataDir == "" {
		conf.DataDir = DefaultDataDir
	}
	for _, p := range []struct{ key, val string }{
		{"subnetFile", conf.SubnetFile}, {"pinPath", conf.PinPath}, {"dataDir", conf.DataDir},
	} {
		if !filepath.IsAbs(p.val) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("weft-cni config: %s %q must be an absolute path", p.key, p.val), "")
		}
	}
	// Weft allocates from the node subnet itself; a delegated IPAM section
	// would be silently ignored, which hides a misconfiguration.
	if conf.IPAM.Type != "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("weft-cni config: ipam type %q not supported: weft-cni allocates from the node subnet in subnetFile, remove the ipam section", conf.IPAM.Type), "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("parse weft-cni prevResult: %v", err), "")
	}
	return conf, nil
}
