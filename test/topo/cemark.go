package topo

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// MarkCE makes both routers of a routed node mark about one in oneIn
// ECN-capable packets crossing their small link CE (Congestion
// Experienced), the way an AQM queue (fq_codel, RED with ecn) signals
// congestion; Not-ECT packets pass unmarked. It stands in for such a qdisc,
// which not every test kernel has: a tc program on the link's egress calling
// bpf_skb_ecn_set_ce, assembled here (it is the router's, not Weft's).
// oneIn must be a power of two. Close the result to stop marking.
func (s *Segment) MarkCE(oneIn uint32) (io.Closer, error) {
	if oneIn == 0 || oneIn&(oneIn-1) != 0 {
		return nil, fmt.Errorf("mark CE: one in %d: want a power of two", oneIn)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "router_mark_ce",
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.FnGetPrandomU32.Call(),
			asm.And.Imm(asm.R0, int32(oneIn-1)),
			asm.JNE.Imm(asm.R0, 0, "out"),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.FnSkbEcnSetCe.Call(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"), // TCX_PASS
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("mark CE: load program: %w", err)
	}
	defer prog.Close() // the links hold it
	m := &ceMarker{}
	for _, ns := range []string{s.Router1NS, s.Router2NS} {
		err := inNetns(netnsPath(ns), func() error {
			l, err := netlink.LinkByName(s.LinkDevice)
			if err != nil {
				return err
			}
			tl, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXEgress})
			if err != nil {
				return err
			}
			m.links = append(m.links, tl)
			return nil
		})
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("mark CE in %s: %w", ns, err)
		}
	}
	return m, nil
}

type ceMarker struct{ links []link.Link }

func (m *ceMarker) Close() error {
	var errs []error
	for _, l := range m.links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}
