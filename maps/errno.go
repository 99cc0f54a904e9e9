package maps

import "golang.org/x/sys/unix"

var errNoEnt = unix.ENOENT
