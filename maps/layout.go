package maps

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The pin layout (PinLayout, also WEFT_PIN_LAYOUT in bpf/weft.h and the
// config map's layout field) is the version of what Weft pins under its pin
// directory: the maps' names and key/value layouts, progs/ and links/. A
// change that makes old pins unreadable bumps it, so that a daemon or tool
// meeting pins of another layout refuses with a clear message instead of
// reading them wrongly. The pin directory records it in a marker that can
// be read without opening any map (whose layout may be the thing that
// changed). Pins made before the marker existed are layout 1.

// layoutPrefix names the marker: an empty directory "layout-<n>" in the pin
// directory (bpffs holds no regular files).
const layoutPrefix = "layout-"

// ErrPinLayout means the pin directory holds another pin layout.
var ErrPinLayout = errors.New("pinned data plane has another pin layout")

// LayoutMarker is the marker directory's name for the current layout.
func LayoutMarker() string { return layoutPrefix + strconv.Itoa(PinLayout) }

// PinnedLayout reads the layout of the pins in dir: 0 with marked false
// when dir has no marker (pins older than versioning).
func PinnedLayout(dir string) (layout int, marked bool, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, false, fmt.Errorf("read pin directory %s: %w", dir, err)
	}
	for _, e := range ents {
		if v, ok := strings.CutPrefix(e.Name(), layoutPrefix); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				return 0, true, fmt.Errorf("%w: unreadable marker %s in %s", ErrPinLayout, e.Name(), dir)
			}
			return n, true, nil
		}
	}
	return 0, false, nil
}

// CheckLayout returns an error wrapping ErrPinLayout, saying what to do,
// unless dir holds pins of PinLayout. Unmarked pins are layout 1; an empty
// directory holds none.
func CheckLayout(dir string) error {
	n, marked, err := PinnedLayout(dir)
	if err != nil {
		return err
	}
	if !marked {
		if ents, err := os.ReadDir(dir); err == nil && len(ents) == 0 {
			return nil // nothing pinned yet
		}
		n = 1 // pins older than the marker
	}
	if n == PinLayout {
		return nil
	}
	return fmt.Errorf("%w: %s holds pin layout %d, this binary reads layout %d; run the Weft version that made them, or remove them (weftd --cleanup-on-exit, or delete %s) and start again",
		ErrPinLayout, dir, n, PinLayout, dir)
}

// MarkLayout records PinLayout in dir (idempotent).
func MarkLayout(dir string) error {
	if err := os.Mkdir(filepath.Join(dir, LayoutMarker()), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("mark pin layout in %s: %w", dir, err)
	}
	return nil
}
