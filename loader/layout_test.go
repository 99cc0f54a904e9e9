package loader

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/maps"
)

func TestPinLayoutVersioned(t *testing.T) {
	pin := testPinPath(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	d.Close()
	if n, marked, err := maps.PinnedLayout(pin); err != nil || !marked || n != maps.PinLayout {
		t.Fatalf("new pins: layout %d marked %v (%v), want %d", n, marked, err, maps.PinLayout)
	}

	// Pins from before the marker existed are layout 1, which this layout
	// cannot read: refused, naming both layouts.
	if err := os.Remove(filepath.Join(pin, maps.LayoutMarker())); err != nil {
		t.Fatal(err)
	}
	_, err = Load(Options{PinPath: pin})
	if !errors.Is(err, maps.ErrPinLayout) || !strings.Contains(err.Error(), "layout 1,") {
		t.Fatalf("load unmarked (layout 1) pins: %v, want ErrPinLayout naming layout 1", err)
	}

	// Pins of another layout are refused, by the loader and by readers.
	os.Remove(filepath.Join(pin, maps.LayoutMarker()))
	if err := os.Mkdir(filepath.Join(pin, "layout-99"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err = Load(Options{PinPath: pin})
	if !errors.Is(err, maps.ErrPinLayout) || !strings.Contains(err.Error(), "layout 99") || !strings.Contains(err.Error(), pin) {
		t.Fatalf("load over layout 99: %v, want ErrPinLayout naming the layout and the path", err)
	}
	if _, err := maps.OpenPinned(pin); !errors.Is(err, maps.ErrPinLayout) {
		t.Fatalf("OpenPinned over layout 99: %v, want ErrPinLayout", err)
	}
	if err := AttachPodPinned(pin, 1); !errors.Is(err, maps.ErrPinLayout) {
		t.Fatalf("AttachPodPinned over layout 99: %v, want ErrPinLayout", err)
	}

	// ... but they can be removed, which is what the refusal tells the
	// operator to do (no host device of that name exists here).
	if err := TeardownNode(pin, "weft-test-none"); err != nil {
		t.Fatalf("teardown of layout 99 pins: %v", err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pins of layout 99 still there after teardown: %v", err)
	}
}

func TestPinWritersShareOneLock(t *testing.T) {
	pin := testPinPath(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	d.Close()

	unlock, err := Lock(pin)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- DetachPodPinned(pin, 12345) }() // what weft-cni DEL does
	select {
	case err := <-done:
		unlock()
		t.Fatalf("a pin writer ran while another held the lock (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pin writer still blocked 10s after the lock was released")
	}

	// Removing the data plane keeps the lock file: deleting it under a
	// holder would let the next writer lock a fresh file beside it.
	if err := Remove(pin); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lockPath(pin)); err != nil {
		t.Fatalf("lock file gone after Remove: %v", err)
	}
}

func TestDaemonAlive(t *testing.T) {
	pin := testPinPath(t)
	if _, alive, err := DaemonAlive(pin); err != nil || alive {
		t.Fatalf("before: alive %v, %v", alive, err)
	}
	release, err := HoldAlive(pin)
	if err != nil {
		t.Fatal(err)
	}
	if pid, alive, err := DaemonAlive(pin); err != nil || !alive || pid != os.Getpid() {
		t.Fatalf("held: pid %d alive %v, %v; want this process", pid, alive, err)
	}
	if _, err := HoldAlive(pin); err == nil || !strings.Contains(err.Error(), "another weftd") {
		t.Fatalf("second holder: %v, want refused", err)
	}
	release()
	if _, alive, err := DaemonAlive(pin); err != nil || alive {
		t.Fatalf("released: alive %v, %v", alive, err)
	}
}
