package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/test/cluster"
)

// Profiling a measured window (--only with --perf and/or --bpf-stats).
//
// --perf FILE runs `perf record -a -g -o FILE` from the moment the window
// starts to the moment it ends (system-wide: on a shared machine other work
// is in it too; compare the network stack's symbols, not totals).
// --bpf-stats reports, per Weft node, how often each pinned program ran in
// the window and its average run time. Run-time accounting is switched on
// with BPF_ENABLE_STATS, which holds it on only while its fd is open, so it
// goes back off when the window ends, or when the bench dies, without
// touching /proc/sys/kernel/bpf_stats_enabled by hand.

// windowProfile is what runs during one window.
type windowProfile struct {
	tag, what string
	start     time.Time
	perf      *exec.Cmd
	perfOut   string
	stats     io.Closer
	progs     []pinnedProg
}

type pinnedProg struct {
	node, name string
	prog       *ebpf.Program
	before     ebpf.ProgramStats
}

// beginWindow announces a measured window (with --only) and starts what
// profiles it; the returned func ends both.
func (o options) beginWindow(tag, what string, c *cluster.Cluster) (end func()) {
	o.window(tag, what, true)
	w := &windowProfile{tag: tag, what: what, start: time.Now()}
	if o.only && o.bpfStats {
		if err := w.startBPFStats(c); err != nil {
			fmt.Printf("%s bpf-stats: %v\n", tag, err)
		}
	}
	if o.only && o.perfOut != "" {
		w.perfOut = o.perfOut
		if err := w.startPerf(); err != nil {
			fmt.Printf("%s perf: %v\n", tag, err)
		}
	}
	return func() {
		w.stopPerf()
		w.stopBPFStats()
		o.window(tag, what, false)
	}
}

func (w *windowProfile) startPerf() error {
	if err := os.MkdirAll(filepath.Dir(w.perfOut), 0o755); err != nil {
		return err
	}
	cmd := exec.Command("perf", "record", "-a", "-g", "-q", "-o", w.perfOut)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start perf record (apt-get install linux-perf): %w", err)
	}
	w.perf = cmd
	return nil
}

func (w *windowProfile) stopPerf() {
	if w.perf == nil {
		return
	}
	// perf record writes its file on SIGINT.
	_ = w.perf.Process.Signal(syscall.SIGINT)
	err := w.perf.Wait()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGINT {
		err = nil // how perf record ends when told to
	}
	if err != nil {
		fmt.Printf("%s perf record: %v\n", w.tag, err)
		return
	}
	fmt.Printf("%s %s: perf samples in %s (perf report -i %s --no-children --sort sym)\n", w.tag, w.what, w.perfOut, w.perfOut)
}

func (w *windowProfile) startBPFStats(c *cluster.Cluster) error {
	closer, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("enable BPF run-time stats: %w", err)
	}
	w.stats = closer
	for _, n := range c.Nodes {
		if n.PinPath == "" {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(n.PinPath, "progs"))
		if err != nil {
			continue // not a Weft node
		}
		for _, e := range ents {
			p, err := ebpf.LoadPinnedProgram(filepath.Join(n.PinPath, "progs", e.Name()), nil)
			if err != nil {
				return fmt.Errorf("open pinned %s of %s: %w", e.Name(), n.Name, err)
			}
			st, err := p.Stats()
			if err != nil {
				p.Close()
				return fmt.Errorf("stats of %s: %w", e.Name(), err)
			}
			w.progs = append(w.progs, pinnedProg{node: n.Name, name: e.Name(), prog: p, before: *st})
		}
	}
	if len(w.progs) == 0 {
		return errors.New("no pinned Weft programs in this cluster")
	}
	return nil
}

func (w *windowProfile) stopBPFStats() {
	if w.stats == nil {
		return
	}
	secs := time.Since(w.start).Seconds()
	type row struct {
		node, name string
		runs       uint64
		ns         time.Duration
	}
	var rows []row
	for _, p := range w.progs {
		st, err := p.prog.Stats()
		p.prog.Close()
		if err != nil {
			continue
		}
		if runs := st.RunCount - p.before.RunCount; runs > 0 {
			rows = append(rows, row{p.node, p.name, runs, st.Runtime - p.before.Runtime})
		}
	}
	w.stats.Close()
	sort.Slice(rows, func(i, j int) bool { return rows[i].ns > rows[j].ns })
	for _, r := range rows {
		fmt.Printf("%s   bpf_stats %s %-16s %9d runs, %5.0f ns each, %6.1f ms in %.1f s (%.1f%% of one CPU)\n",
			w.tag, r.node, r.name, r.runs, float64(r.ns)/float64(r.runs), float64(r.ns)/1e6, secs,
			100*r.ns.Seconds()/secs)
	}
}
