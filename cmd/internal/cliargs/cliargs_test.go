package cliargs

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	vf := map[string]bool{"--pin-path": true, "-o": true}
	for _, c := range []struct{ in, want []string }{
		{[]string{"--pin-path", "X", "tunnels"}, []string{"tunnels", "--pin-path", "X"}},
		{[]string{"--pin-path=X", "tunnels", "-o", "json"}, []string{"tunnels", "--pin-path=X", "-o", "json"}},
		{[]string{"-o", "json", "stats", "extra"}, []string{"stats", "-o", "json", "extra"}},
		{[]string{"tunnels", "--pin-path", "X"}, []string{"tunnels", "--pin-path", "X"}},
		{[]string{"help", "tunnels"}, []string{"tunnels", "-h"}},
		{[]string{"--pin-path", "X", "help", "stats"}, []string{"stats", "-h", "--pin-path", "X"}},
		{[]string{"help"}, []string{"help"}},
		{[]string{"--pin-path", "X", "-h"}, []string{"-h", "--pin-path", "X"}},
		{[]string{}, []string{}},
	} {
		if got := Normalize(c.in, vf); !slices.Equal(got, c.want) {
			t.Errorf("Normalize(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestNeedsRoot(t *testing.T) {
	err := NeedsRoot(fmt.Errorf("open pins: %w", os.ErrPermission), "weftctl")
	if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "run weftctl as root") {
		t.Errorf("NeedsRoot(EPERM) = %v", err)
	}
	other := errors.New("boom")
	if NeedsRoot(other, "weftd") != other {
		t.Error("NeedsRoot changed an unrelated error")
	}
}
