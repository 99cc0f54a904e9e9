package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// alivePath is the file a running weftd holds locked for its pin path.
func alivePath(pinPath string) string {
	return filepath.Join("/run/weft", "weftd-"+sanitize(pinPath)+".pid")
}

// HoldAlive marks this process as the daemon managing pinPath until
// release is called or the process dies: an flock on a file holding its
// pid, which the kernel drops with the process, so a crashed weftd never
// looks alive. It fails if another live process holds it.
func HoldAlive(pinPath string) (release func(), err error) {
	name := alivePath(pinPath)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(name), err)
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := readPID(name)
			return nil, fmt.Errorf("another weftd (pid %d) manages %s", pid, pinPath)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// DaemonAlive reports whether a weftd holds pinPath (HoldAlive) and its pid.
func DaemonAlive(pinPath string) (pid int, alive bool, err error) {
	name := alivePath(pinPath)
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("open %s: %w", name, err)
	}
	defer f.Close()
	switch err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); {
	case err == nil:
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return 0, false, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		pid, _ := readPID(name)
		return pid, true, nil
	default:
		return 0, false, fmt.Errorf("lock %s: %w", name, err)
	}
}

func readPID(name string) (int, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// ForgetPinPath deletes the lock and pid files of a pin path that no
// process can use any more: a lab or test removing its own throwaway pin
// directories after stopping every process of the run. A node's pin path
// must not be forgotten while anything may still lock it (see Lock).
func ForgetPinPath(pinPath string) error {
	var errs []error
	for _, name := range []string{lockPath(pinPath), alivePath(pinPath)} {
		if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
