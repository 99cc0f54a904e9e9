package topo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// feature is one ethtool offload: the name `ethtool -K` takes, the name
// `ethtool -k` prints, and its value in wire-like mode and in veth's default.
type feature struct {
	set, show  string
	wire, veth bool
}

// wireFeatures make a veth behave like a wire: nothing leaves it as a GSO
// super-packet (segmentation happens before the veth, as a NIC would do it),
// and receive coalesces with GRO, as a NIC driver's NAPI would. The veth
// column is a fresh veth's state.
var wireFeatures = []feature{
	{set: "tso", show: "tcp-segmentation-offload", wire: false, veth: true},
	{set: "gso", show: "generic-segmentation-offload", wire: false, veth: true},
	{set: "tx-udp-segmentation", show: "tx-udp-segmentation", wire: false, veth: true},
	{set: "gro", show: "generic-receive-offload", wire: true, veth: false},
}

// Offloads is a shape of the underlay veths' offloads.
type Offloads int

const (
	// VethDefaults leaves both ends of every underlay veth as a fresh veth
	// has them: GSO super-packets cross the underlay whole, which no wire does.
	VethDefaults Offloads = iota
	// WireLike makes both ends behave like a wire (wireFeatures): the node
	// segments before sending, GRO on receive.
	WireLike
	// NodeEndWireLike makes only the node's eth0 wire-like and leaves the
	// bridge-side port at veth defaults (TSO on), as on container-based
	// nodes (kind) or VMs whose host side nobody tuned. A veth runs NAPI and
	// GRO only for skbs from a peer without TSO (veth_skb_is_eligible_for_gro),
	// so here nothing coalesces before the receiving node's tc hook.
	NodeEndWireLike
)

func (o Offloads) String() string {
	switch o {
	case WireLike:
		return "wire-like"
	case NodeEndWireLike:
		return "node-end-wire-like"
	}
	return "veth-defaults"
}

// SetWireLike switches every underlay veth end (each node's eth0 and its
// bridge-side peer) to wire-like offloads (on) or back to veth defaults
// (off). Nodes added later inherit the current setting. Features a kernel
// lacks (tx-udp-segmentation) are skipped.
func (l *Lab) SetWireLike(on bool) error {
	if on {
		return l.SetOffloads(WireLike)
	}
	return l.SetOffloads(VethDefaults)
}

// SetOffloads gives every underlay veth end the offloads of shape o; nodes
// added later inherit it.
func (l *Lab) SetOffloads(o Offloads) error {
	l.mu.Lock()
	l.offloads = o
	nodes := append([]*Node(nil), l.Nodes...)
	l.mu.Unlock()
	var errs []error
	for _, n := range nodes {
		errs = append(errs, n.setOffloads(o))
	}
	return errors.Join(errs...)
}

func (n *Node) setOffloads(o Offloads) error {
	peerNS := n.Lab.UnderlayPath
	if n.Segment != nil {
		peerNS = netnsPath(n.Segment.Router2NS)
	}
	return errors.Join(
		setFeatures(n.NSPath, n.UnderlayIf, o != VethDefaults),
		setFeatures(peerNS, n.UnderlayPeer, o == WireLike),
	)
}

func setFeatures(nsPath, dev string, wire bool) error {
	if _, err := exec.LookPath("ethtool"); err != nil {
		return fmt.Errorf("set offloads on %s: ethtool not installed (apt-get install ethtool): %w", dev, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	have, err := Features(ctx, nsPath, dev)
	if err != nil {
		return err
	}
	var args []string
	for _, f := range wireFeatures {
		st, ok := have[f.show]
		want := f.veth
		if wire {
			want = f.wire
		}
		if !ok || (st.Fixed && st.On == want) {
			continue
		}
		args = append(args, f.set, onOff(want))
	}
	if len(args) == 0 {
		return nil
	}
	if _, err := execIn(ctx, nsPath, "ethtool", append([]string{"-K", dev}, args...)...); err != nil {
		return fmt.Errorf("set offloads on %s: %w", dev, err)
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// FeatureState is one line of `ethtool -k`.
type FeatureState struct{ On, Fixed bool }

// Features returns the offload features of dev in the namespace at nsPath,
// keyed by the names `ethtool -k` prints.
func Features(ctx context.Context, nsPath, dev string) (map[string]FeatureState, error) {
	out, err := execIn(ctx, nsPath, "ethtool", "-k", dev)
	if err != nil {
		return nil, fmt.Errorf("read offloads of %s: %w", dev, err)
	}
	fs := map[string]FeatureState{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), ": ")
		if !ok {
			continue // the "Features for eth0:" header
		}
		fs[name] = FeatureState{On: strings.HasPrefix(val, "on"), Fixed: strings.Contains(val, "[fixed]")}
	}
	return fs, nil
}
