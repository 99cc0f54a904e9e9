package topo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, the same place
// iproute2 uses, so `ip netns list` and `nsenter --net=` see the lab.
const NetnsDir = "/var/run/netns"

func netnsPath(name string) string { return filepath.Join(NetnsDir, name) }

// onLockedThread runs enter and then fn on a fresh goroutine locked to its OS
// thread, and afterwards moves the thread back to the network namespace it
// started in. If that move fails the goroutine exits still locked, which makes
// the Go runtime terminate the thread: a thread must never go back to the pool
// while it sits in a foreign namespace. fn must not start goroutines that
// expect to inherit the namespace.
func onLockedThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer origin.Close()

		// enter may fail after it already switched (unshare, then a
		// failing bind mount), so restore in every case.
		err = enter()
		if err == nil {
			err = fn()
		}
		if rerr := netns.Set(origin); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore netns, discarding thread: %w", rerr))
			return // still locked: the runtime kills this thread
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// inNetns runs fn on a locked OS thread inside the namespace bind-mounted at path.
func inNetns(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	return onLockedThread(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return nil
	}, fn)
}

// handleAt returns a netlink handle whose sockets live in the namespace at
// path. netlink.NewHandleAt would do the same switch internally, but it
// ignores a failed switch back and unlocks the thread anyway; creating the
// sockets through inNetns keeps the restore-or-die rule. Netlink sockets stay
// bound to the namespace they were created in, so the handle is usable from
// any goroutine afterwards.
func handleAt(path string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inNetns(path, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return h, nil
}

// withHandle runs fn with a netlink handle in the namespace at path.
func withHandle(path string, fn func(h *netlink.Handle) error) error {
	h, err := handleAt(path)
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// createNetns creates a new network namespace and bind-mounts it at
// NetnsDir/name. The O_EXCL create makes sure we never adopt (and later
// delete) a namespace somebody else made.
func createNetns(name string) error {
	path := netnsPath(name)
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetnsDir, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()

	err = onLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err)
		}
		return nil
	}, func() error {
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount netns: %w", err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

// deleteNetns kills the processes living in the namespace, then unmounts and
// removes its file. The kernel frees the namespace (and the veths in it) once
// the last reference is gone. A namespace that is already gone is not an error.
func deleteNetns(name string) error {
	path := netnsPath(name)
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	kerr := killNetnsProcs(path)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return errors.Join(kerr, fmt.Errorf("unmount netns %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return errors.Join(kerr, fmt.Errorf("remove netns file %s: %w", path, err))
	}
	return kerr
}

// killNetnsProcs sends SIGKILL to every process whose network namespace is
// the one mounted at path (matched by nsfs device and inode), except this
// process. It is the catch-all for children of children and for processes a
// crashed run left behind.
func killNetnsProcs(path string) error {
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat netns %s: %w", path, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var errs []error
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue // gone, or a kernel thread
		}
		if st.Dev != want.Dev || st.Ino != want.Ino {
			continue
		}
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("kill pid %d in %s: %w", pid, path, err))
		}
	}
	return errors.Join(errs...)
}

// CleanupPrefix deletes every namespace named "<prefix>-*" under NetnsDir and
// kills the processes in them: crash recovery for labs whose Close never ran.
// prefix must be a valid lab prefix, so it can never match another lab's
// namespaces ("wt" does not match "wtab12cd-ul").
func CleanupPrefix(prefix string) error {
	if err := validPrefix(prefix); err != nil {
		return err
	}
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", NetnsDir, err)
	}
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			errs = append(errs, deleteNetns(e.Name()))
		}
	}
	return errors.Join(errs...)
}

// Do runs fn on a locked OS thread inside the namespace at nsPath (a node's,
// a pod's or the underlay's), restoring the thread afterwards. Sockets made
// inside fn stay in that namespace.
func Do(nsPath string, fn func() error) error { return inNetns(nsPath, fn) }
