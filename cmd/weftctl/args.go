package main

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// valueFlags are weftctl's flags that take a separate value, so that they
// can be written before the command (cliargs.Normalize).
var valueFlags = map[string]bool{"--pin-path": true, "-o": true, "--output": true}

// explain adds what to do about an error a user can fix: reading pinned BPF
// objects needs root (CAP_BPF and CAP_SYS_ADMIN on most kernels).
func explain(err error) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%w (reading the pinned BPF maps needs root: run weftctl with sudo)", err)
	}
	return err
}
