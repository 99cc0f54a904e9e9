package main

import "github.com/weftnet/weft/cmd/internal/cliargs"

// valueFlags are weftctl's flags that take a separate value, so that they
// can be written before the command (cliargs.Normalize).
var valueFlags = map[string]bool{"--pin-path": true, "-o": true, "--output": true}

// explain adds what to do about an error a user can fix: reading pinned BPF
// objects needs root.
func explain(err error) error { return cliargs.NeedsRoot(err, "weftctl") }
