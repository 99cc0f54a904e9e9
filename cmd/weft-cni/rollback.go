package main

import (
	"errors"
	"fmt"
)

// rollback collects the undo of each step ADD has completed, so a failure
// anywhere leaves the node as it found it: nothing half-made for DEL (or an
// operator) to guess about.
type rollback struct {
	undo []namedUndo
}

type namedUndo struct {
	what string
	fn   func() error
}

// add registers the undo of a step just taken (or about to be: an undo must
// tolerate finding nothing to remove).
func (r *rollback) add(what string, fn func() error) {
	r.undo = append(r.undo, namedUndo{what, fn})
}

// run undoes in reverse order and reports what could not be undone.
func (r *rollback) run() error {
	var errs []error
	for i := len(r.undo) - 1; i >= 0; i-- {
		if err := r.undo[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", r.undo[i].what, err))
		}
	}
	r.undo = nil
	return errors.Join(errs...)
}

// failpoint lets tests fail ADD right after a named step, to prove that
// every step's undo works. Always nil in the plugin.
var failpoint func(step string) error

// errSimulatedCrash, returned by a failpoint, makes ADD stop without
// rolling back: what a plugin killed at that point leaves for DEL.
var errSimulatedCrash = errors.New("simulated crash")

func checkpoint(step string) error {
	if failpoint == nil {
		return nil
	}
	if err := failpoint(step); err != nil {
		return fmt.Errorf("after %s: %w", step, err)
	}
	return nil
}
