// Package loader loads Weft's BPF programs, keeps its maps and links pinned
// under one bpffs directory, attaches the programs to a node's devices and
// replaces them in place on upgrade.
//
// Pin layout (default /sys/fs/bpf/weft):
//
//	tunnels endpoints config stats peer_counters  maps (pinned by name, see bpf/maps.h)
//	progs/<program>                               the programs currently in use (weft-cni attaches progs/from_pod)
//	links/<hook>                                  bpf_links: underlay-tc, underlay-xdp, host, gro-sink, pod-<ifindex>
//
// Everything a packet needs is pinned, so the data plane keeps forwarding
// while no Weft process runs. A new version loads its programs against the
// pinned maps and swaps each pinned link's program atomically
// (BPF_LINK_UPDATE): no moment without a program, no emptied map.
//
// Attaching resolves interface indexes in the calling thread's network
// namespace; callers working on another namespace run the attach inside it.
package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/maps"
)

// DefaultPinPath is where a node's maps, programs and links are pinned.
const DefaultPinPath = "/sys/fs/bpf/weft"

// BPFFSRoot is where bpffs is expected to be mounted.
const BPFFSRoot = "/sys/fs/bpf"

// ErrIncompatiblePins is returned by Load when the pinned maps were created
// with another layout; the data plane must be removed (Remove) or migrated.
var ErrIncompatiblePins = errors.New("pinned maps have an incompatible layout")

// Options tells Load where to pin.
type Options struct {
	PinPath string // default DefaultPinPath
}

// Datapath is a loaded set of Weft programs bound to the pinned maps.
type Datapath struct {
	PinPath string
	Maps    *maps.Set
	objs    bpf.WeftObjects

	// updateLink swaps a link's program; a test replaces it to inject failure.
	updateLink func(l pinnedLink, p *ebpf.Program) error
}

// Load ensures bpffs is mounted, opens the pinned maps (creating and pinning
// them on first use, atomically: built in a temporary directory, then
// renamed into place), loads the programs against them and pins the
// programs. Links are not touched: see Attach* and Upgrade.
func Load(opts Options) (*Datapath, error) {
	pinPath := opts.PinPath
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	if err := EnsureBPFFS(filepath.Dir(pinPath)); err != nil {
		return nil, err
	}
	unlock, err := Lock(pinPath)
	if err != nil {
		return nil, err
	}
	defer unlock()

	spec, err := bpf.LoadWeft()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}

	d := &Datapath{PinPath: pinPath, updateLink: func(l pinnedLink, p *ebpf.Program) error { return l.Update(p) }}
	if _, err := os.Stat(pinPath); errors.Is(err, os.ErrNotExist) {
		err = d.createPins(spec)
		if err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("stat %s: %w", pinPath, err)
	} else {
		// Pins of another layout are refused before anything reads them;
		// unmarked pins predate versioning (layout 1). Marked after loading.
		if err := maps.CheckLayout(pinPath); err != nil {
			return nil, err
		}
		if err := d.loadInto(spec, pinPath); err != nil {
			return nil, err
		}
		if err := maps.MarkLayout(pinPath); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	d.Maps = maps.FromMaps(&d.objs.WeftMaps)
	return d, nil
}

// createPins builds a fresh pin directory next to the final one and renames
// it into place, so a crash leaves either nothing or a complete directory.
func (d *Datapath) createPins(spec *ebpf.CollectionSpec) error {
	// bpffs refuses names with dots, hence the underscores.
	tmp, err := os.MkdirTemp(filepath.Dir(d.PinPath), filepath.Base(d.PinPath)+"_tmp_")
	if err != nil {
		return fmt.Errorf("create temporary pin directory: %w", err)
	}
	if err := d.loadInto(spec, tmp); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := maps.MarkLayout(tmp); err != nil {
		d.objs.Close()
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, d.PinPath); err != nil {
		d.objs.Close()
		os.RemoveAll(tmp)
		return fmt.Errorf("move pins into %s: %w", d.PinPath, err)
	}
	return nil
}

// loadInto loads the collection with its maps pinned in dir and pins the
// programs under dir/progs.
func (d *Datapath) loadInto(spec *ebpf.CollectionSpec, dir string) error {
	err := spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: dir},
	})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return fmt.Errorf("load BPF objects against %s: %w: %w", dir, ErrIncompatiblePins, err)
		}
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return fmt.Errorf("load BPF objects: %+v", verr)
		}
		return fmt.Errorf("load BPF objects: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "progs"), 0o700); err != nil {
		d.objs.Close()
		return fmt.Errorf("create %s/progs: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "links"), 0o700); err != nil {
		d.objs.Close()
		return fmt.Errorf("create %s/links: %w", dir, err)
	}
	for name, prog := range d.programs() {
		if err := replacePin(prog, filepath.Join(dir, "progs", name)); err != nil {
			d.objs.Close()
			return err
		}
	}
	return nil
}

func (d *Datapath) programs() map[string]*ebpf.Program {
	return map[string]*ebpf.Program{
		bpf.WeftProgFromPod:         d.objs.FromPod,
		bpf.WeftProgFromHost:        d.objs.FromHost,
		bpf.WeftProgFromUnderlay:    d.objs.FromUnderlay,
		bpf.WeftProgFromUnderlayXdp: d.objs.FromUnderlayXdp,
		bpf.WeftProgGroSink:         d.objs.GroSink,
		bpf.WeftProgFromGroCell:     d.objs.FromGroCell,
	}
}

// replacePin pins prog at path, replacing what is there without a moment
// where the path is missing (pin beside it, rename over it).
func replacePin(prog *ebpf.Program, path string) error {
	tmp := path + "_new" // bpffs refuses names with dots
	os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	// Pin remembers the path; unpinning later must name the final one.
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	return nil
}

// Close releases this process's handles. Pins and links stay, and so does
// the data plane.
func (d *Datapath) Close() error {
	return d.objs.Close()
}

// Program returns one of the loaded programs by its C name.
func (d *Datapath) Program(name string) (*ebpf.Program, error) {
	p, ok := d.programs()[name]
	if !ok {
		return nil, fmt.Errorf("no program %q", name)
	}
	return p, nil
}

// EnsureBPFFS mounts bpffs at root (normally /sys/fs/bpf) unless a bpffs is
// already there. A fresh machine does not mount it.
func EnsureBPFFS(root string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if root != BPFFSRoot {
		// A pin path below bpffs: check the real mount point instead.
		if err := unix.Statfs(BPFFSRoot, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
			if err := os.MkdirAll(root, 0o700); err != nil {
				return fmt.Errorf("create %s: %w", root, err)
			}
			return nil
		}
	}
	if err := os.MkdirAll(BPFFSRoot, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", BPFFSRoot, err)
	}
	if err := unix.Mount("bpf", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFSRoot, err)
	}
	if root != BPFFSRoot {
		if err := os.MkdirAll(root, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", root, err)
		}
	}
	return nil
}

// Lock serialises every writer of one pin directory and its links with an
// flock: Load, SetupNode (attach, upgrade), weft-cni's AttachPodPinned and
// DetachPodPinned, Datapath.AttachPod/DetachPod, Remove and TeardownNode
// each take it. bpffs holds only BPF objects, so the lock file lives in
// /run/weft, named after the pin path; it is never removed (a lock file
// deleted under a holder would let the next writer lock a new file and run
// beside it), and /run is emptied at boot. flock is per open file, so a
// locked function must not call another: the unlocked helpers do the work.
func Lock(pinPath string) (unlock func(), err error) {
	name := lockPath(pinPath)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, fmt.Errorf("create lock directory: %w", err)
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// lockPath is the lock file of one pin directory.
func lockPath(pinPath string) string {
	return filepath.Join("/run/weft", "pins-"+sanitize(pinPath)+".lock")
}

func sanitize(path string) string {
	b := []byte(filepath.Clean(path))
	for i, c := range b {
		if c == '/' {
			b[i] = '_'
		}
	}
	return string(b)
}
