package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/maps"
)

// DecapMode selects the receive flavour on the underlay.
type DecapMode string

const (
	// DecapXDP validates and decapsulates in XDP (native, generic as
	// fallback) and lets GRO coalesce the inner flow; tc delivers.
	DecapXDP DecapMode = "xdp"
	// DecapTC does everything at tc ingress: after the underlay's GRO where
	// it runs one (weftgro0), else with aggregation after decap (the GRO
	// cell, grocell.go).
	DecapTC DecapMode = "tc"
)

// ParseDecapMode accepts "xdp" or "tc".
func ParseDecapMode(s string) (DecapMode, error) {
	switch DecapMode(s) {
	case DecapXDP, DecapTC:
		return DecapMode(s), nil
	}
	return "", fmt.Errorf("decap mode %q: want xdp or tc", s)
}

// Link pin names under <pin path>/links.
const (
	LinkUnderlayTC  = "underlay-tc"
	LinkUnderlayXDP = "underlay-xdp"
	LinkHost        = "host"
	linkPodPrefix   = "pod-"
)

// PodLinkName is the pin name of the from_pod link on host-side veth ifindex.
func PodLinkName(ifindex int) string { return linkPodPrefix + strconv.Itoa(ifindex) }

// pinnedLink is what we need of a bpf_link.
type pinnedLink = link.Link

// AttachUnderlay attaches the receive path to the underlay NIC: tc ingress
// always, XDP too in DecapXDP mode (native, or generic where the driver has
// no XDP). In DecapTC mode a previously pinned XDP link is removed.
func (d *Datapath) AttachUnderlay(ifindex int, mode DecapMode) error {
	if _, err := ParseDecapMode(string(mode)); err != nil {
		return err
	}
	if err := d.attachTC(LinkUnderlayTC, ifindex, d.objs.FromUnderlay, ebpf.AttachTCXIngress); err != nil {
		return err
	}
	if mode != DecapXDP {
		return detachPinned(d.PinPath, LinkUnderlayXDP)
	}
	return d.attachOrUpdate(LinkUnderlayXDP, ifindex, d.objs.FromUnderlayXdp, func() (link.Link, error) {
		l, err := link.AttachXDP(link.XDPOptions{Program: d.objs.FromUnderlayXdp, Interface: ifindex, Flags: link.XDPDriverMode})
		if err == nil {
			return l, nil
		}
		generic, gerr := link.AttachXDP(link.XDPOptions{Program: d.objs.FromUnderlayXdp, Interface: ifindex, Flags: link.XDPGenericMode})
		if gerr != nil {
			return nil, fmt.Errorf("native: %w; generic: %w", err, gerr)
		}
		return generic, nil
	})
}

// AttachHost attaches from_host to weft0's egress.
func (d *Datapath) AttachHost(ifindex int) error {
	return d.attachTC(LinkHost, ifindex, d.objs.FromHost, ebpf.AttachTCXEgress)
}

// AttachPod attaches from_pod to a pod's host-side veth (its ingress: what
// the pod sends).
func (d *Datapath) AttachPod(ifindex int) error {
	unlock, err := Lock(d.PinPath)
	if err != nil {
		return err
	}
	defer unlock()
	return d.attachTC(PodLinkName(ifindex), ifindex, d.objs.FromPod, ebpf.AttachTCXIngress)
}

// DetachPod removes the from_pod link of a veth; fine if there is none.
func (d *Datapath) DetachPod(ifindex int) error {
	unlock, err := Lock(d.PinPath)
	if err != nil {
		return err
	}
	defer unlock()
	return detachPinned(d.PinPath, PodLinkName(ifindex))
}

// AttachPodPinned attaches the pinned from_pod program to a veth without
// loading anything: what weft-cni does against a running node.
func AttachPodPinned(pinPath string, ifindex int) error {
	unlock, err := Lock(pinPath)
	if err != nil {
		return err
	}
	defer unlock()
	if err := maps.CheckLayout(pinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(pinPath, "progs", bpf.WeftProgFromPod), nil)
	if err != nil {
		return fmt.Errorf("open pinned from_pod (is weftd running?): %w", err)
	}
	defer prog.Close()
	d := &Datapath{PinPath: pinPath, updateLink: func(l pinnedLink, p *ebpf.Program) error { return l.Update(p) }}
	return d.attachTC(PodLinkName(ifindex), ifindex, prog, ebpf.AttachTCXIngress)
}

// DetachPodPinned is DetachPod for callers without a loaded Datapath.
func DetachPodPinned(pinPath string, ifindex int) error {
	unlock, err := Lock(pinPath)
	if err != nil {
		return err
	}
	defer unlock()
	return detachPinned(pinPath, PodLinkName(ifindex))
}

func (d *Datapath) attachTC(name string, ifindex int, prog *ebpf.Program, at ebpf.AttachType) error {
	return d.attachOrUpdate(name, ifindex, prog, func() (link.Link, error) {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: at})
		if errors.Is(err, link.ErrNotSupported) {
			return nil, attachClsact(ifindex, prog, at)
		}
		return l, err
	})
}

// attachOrUpdate makes the link pinned as name run prog on ifindex. If a
// pinned link already targets ifindex its program is swapped atomically
// (the upgrade path: traffic never sees a missing program); a stale pin
// (interface gone or index reused elsewhere) is replaced by a new link.
func (d *Datapath) attachOrUpdate(name string, ifindex int, prog *ebpf.Program, create func() (link.Link, error)) error {
	pin := filepath.Join(d.PinPath, "links", name)
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("create links directory: %w", err)
	}
	if old, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer old.Close()
		if linkIfindex(old) == uint32(ifindex) {
			if err := d.updateLink(old, prog); err != nil {
				return fmt.Errorf("update link %s: %w", name, err)
			}
			return nil
		}
		// Defunct or pointing elsewhere: drop it and attach afresh.
		if err := old.Unpin(); err != nil {
			return fmt.Errorf("unpin stale link %s: %w", name, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open pinned link %s: %w", name, err)
	}

	l, err := create()
	if err != nil {
		return fmt.Errorf("attach %s to ifindex %d: %w", name, ifindex, err)
	}
	if l == nil {
		return nil // legacy tc filter: lives with the qdisc, nothing to pin
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin link %s: %w", name, err)
	}
	return nil
}

func linkIfindex(l link.Link) uint32 {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	if tcx := info.TCX(); tcx != nil {
		return tcx.Ifindex
	}
	if xdp := info.XDP(); xdp != nil {
		return xdp.Ifindex
	}
	return 0
}

// detachPinned unpins and closes a link: with its last reference gone the
// kernel detaches the program.
func detachPinned(pinPath, name string) error {
	pin := filepath.Join(pinPath, "links", name)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link we can open (e.g. wrong type): remove the pin anyway.
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("remove pin %s: %w", pin, rerr)
		}
		return nil
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	return nil
}

// Links lists the pinned links by name.
func Links(pinPath string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(pinPath, "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// PodLinks returns the host-side veth ifindexes that have a pinned from_pod link.
func PodLinks(pinPath string) ([]int, error) {
	names, err := Links(pinPath)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, n := range names {
		if idx, ok := strings.CutPrefix(n, linkPodPrefix); ok {
			if i, err := strconv.Atoi(idx); err == nil {
				out = append(out, i)
			}
		}
	}
	return out, nil
}

// Upgrade points every pinned link at this Datapath's programs. The caller
// holds Lock (SetupNode does). Each swap is
// one BPF_LINK_UPDATE: a packet runs the old or the new program, never none.
func (d *Datapath) Upgrade() error {
	names, err := Links(d.PinPath)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		var prog *ebpf.Program
		switch {
		case name == LinkUnderlayTC:
			prog = d.objs.FromUnderlay
		case name == LinkUnderlayXDP:
			prog = d.objs.FromUnderlayXdp
		case name == LinkHost:
			prog = d.objs.FromHost
		case name == LinkGROSink:
			prog = d.objs.GroSink
		case name == LinkGROCell:
			prog = d.objs.FromGroCell
		case strings.HasPrefix(name, linkPodPrefix):
			prog = d.objs.FromPod
		default:
			continue
		}
		l, err := link.LoadPinnedLink(filepath.Join(d.PinPath, "links", name), nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open link %s: %w", name, err))
			continue
		}
		if err := d.updateLink(l, prog); err != nil {
			errs = append(errs, fmt.Errorf("update link %s: %w", name, err))
		}
		l.Close()
	}
	return errors.Join(errs...)
}

// Remove detaches every pinned link and deletes the pin directory: the
// node's data plane is gone afterwards. The lock file stays (see Lock).
func Remove(pinPath string) error {
	unlock, err := Lock(pinPath)
	if err != nil {
		return err
	}
	defer unlock()
	return remove(pinPath)
}

func remove(pinPath string) error {
	names, err := Links(pinPath)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, detachPinned(pinPath, n))
	}
	errs = append(errs, os.RemoveAll(pinPath))
	return errors.Join(errs...)
}

// attachClsact is the fallback for kernels without TCX (< 6.6): a clsact
// qdisc with a direct-action filter. Such filters cannot be pinned, but
// they outlive the process just the same.
func attachClsact(ifindex int, prog *ebpf.Program, at ebpf.AttachType) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if at == ebpf.AttachTCXEgress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	info, _ := prog.Info()
	name := "weft"
	if info != nil {
		name = info.Name
	}
	filter := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: ifindex, Parent: parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("add tc filter: %w", err)
	}
	return nil
}
