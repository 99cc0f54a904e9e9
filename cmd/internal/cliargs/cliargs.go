// Package cliargs holds what Weft's command-line tools share. It lets a
// subcommand CLI take its flags before or after the
// command, as kubectl, cilium and bpftool users type them
// ("weftctl --pin-path X tunnels"), and understand "help <command>". Each
// subcommand parses its own flags, so Normalize only moves the flags
// written before the command name behind it.
package cliargs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// Normalize returns args with the command name first. valueFlags names the
// flags that take their value as the next argument ("--pin-path X");
// "--flag=value" needs no listing. "help <command>" becomes
// "<command> -h"; "-h" before any command stays first.
func Normalize(args []string, valueFlags map[string]bool) []string {
	var before []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-h" || a == "--help":
			return append([]string{a}, before...)
		case a == "--" || a == "-":
			return args
		case !strings.HasPrefix(a, "-"):
			if a == "help" && i+1 < len(args) {
				return append([]string{args[i+1], "-h"}, before...)
			}
			return append(append([]string{a}, before...), args[i+1:]...)
		}
		before = append(before, a)
		if valueFlags[a] && i+1 < len(args) {
			i++
			before = append(before, args[i])
		}
	}
	return args
}

// NeedsRoot adds what to do to a permission error: Weft's programs load
// BPF, pin under bpffs and change network namespaces, which needs root
// (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN on most kernels). Other errors
// are returned unchanged.
func NeedsRoot(err error, tool string) error {
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%w (permission denied: run %s as root, e.g. with sudo)", err, tool)
	}
	return err
}
