package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The lifecycle engine. Every lifecycle path (create, start, teardown,
// delete, reconcile) is a list of Steps built by one function
// (buildCreateSteps, buildStartSteps, buildTeardownSteps, buildDeleteSteps)
// and run here, journalling each stage:
//
//   - RunSteps runs a list in order; when a step fails, the steps that
//     succeeded are undone in reverse (Undo, or the Release of a step that
//     acquires a resource).
//   - A start step that acquires a host resource the VM holds while it runs
//     declares its Release. Teardown is derived from the start list: it runs,
//     in reverse, the Release of every step whose resource the VM's recorded
//     runtime still holds (ReleaseSteps). Adding a resource is one Step with
//     Do and Release in buildStartSteps.

// Step is one named, undoable part of a long operation.
type Step struct {
	Name string
	Do   func(ctx context.Context) error
	// Undo rolls Do back when a later step of the same run fails. It must be
	// idempotent: it runs on a context that is not the request's. Nil with a
	// Release: the Release is the undo. Nil without one: nothing to undo.
	Undo func(ctx context.Context) error
	// Release, if set, makes the step the owner of a host resource the VM
	// keeps after the run (a tap, the VMM process, firewall rules...):
	// teardown releases it.
	Release *Release
	// Detail, if set, is journalled with the step's success (what it chose).
	Detail func() string
}

// Release gives back a resource a start step acquired. It works from the
// VM as recorded (its runtime), not from the state of the run that
// acquired it: teardown happens in another request, or after a daemon
// restart.
type Release struct {
	// Stage is the journal name of the release; empty: the step's name.
	Stage string
	// Held reports whether the VM as recorded still holds the resource; nil:
	// always attempt (Do must then be harmless when there is nothing).
	Held func() bool
	// Do releases the resource; idempotent.
	Do func(ctx context.Context) error
}

// StepObserver hears about steps as they pass (the operation journal).
type StepObserver interface {
	Stage(name, status, detail string)
}

// Stage statuses the engine journals.
const (
	StatusDone       = "done"
	StatusFailed     = "failed"
	StatusUndone     = "undone"
	StatusUndoFailed = "undo-failed"
	StatusNote       = "note"
)

// undoTimeout bounds the whole undo of one failed operation.
const undoTimeout = 60 * time.Second

// StepError is a failed run of steps: the step that failed, its error, and
// the errors of the undos that failed too (empty when the rollback was
// complete). Its class (errdefs.ClassOf) is the failed step's.
type StepError struct {
	Step     string
	Err      error
	UndoErrs []error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("step %q: %v", e.Step, e.Err)
	for _, u := range e.UndoErrs {
		msg += "; " + u.Error()
	}
	return msg
}

// Unwrap is the step's error only: what failed, not what its rollback hit.
func (e *StepError) Unwrap() error { return e.Err }

// RolledBack reports whether every undo succeeded.
func (e *StepError) RolledBack() bool { return len(e.UndoErrs) == 0 }

// RunSteps runs steps in order. When one fails, every step that succeeded
// is undone in reverse order, on a context detached from ctx's cancellation
// (a cancelled request still cleans up); undo keeps going past failures.
// The error is a *StepError.
func RunSteps(ctx context.Context, steps []Step, obs StepObserver) error {
	for i, st := range steps {
		if err := ctx.Err(); err != nil {
			return undo(ctx, steps[:i], obs, &StepError{Step: st.Name, Err: fmt.Errorf("not started: %w", err)})
		}
		if err := st.Do(ctx); err != nil {
			obs.Stage(st.Name, StatusFailed, err.Error())
			return undo(ctx, steps[:i], obs, &StepError{Step: st.Name, Err: err})
		}
		detail := ""
		if st.Detail != nil {
			detail = st.Detail()
		}
		obs.Stage(st.Name, StatusDone, detail)
	}
	return nil
}

// undoOf is what rolls st back: its Undo, else its Release, else nothing.
func undoOf(st Step) func(context.Context) error {
	if st.Undo != nil {
		return st.Undo
	}
	if st.Release != nil {
		return st.Release.Do
	}
	return nil
}

func undo(ctx context.Context, done []Step, obs StepObserver, fail *StepError) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	for i := len(done) - 1; i >= 0; i-- {
		st := done[i]
		fn := undoOf(st)
		if fn == nil {
			continue
		}
		if err := fn(ctx); err != nil {
			obs.Stage(st.Name, StatusUndoFailed, err.Error())
			fail.UndoErrs = append(fail.UndoErrs, fmt.Errorf("undo %q: %w", st.Name, err))
			continue
		}
		obs.Stage(st.Name, StatusUndone, "")
	}
	return fail
}

// ReleaseSteps derives a teardown from a start list: the Release of every
// step whose resource is held, in reverse order, as steps named by their
// release stage.
func ReleaseSteps(start []Step) []Step {
	var out []Step
	for i := len(start) - 1; i >= 0; i-- {
		r := start[i].Release
		if r == nil || (r.Held != nil && !r.Held()) {
			continue
		}
		name := r.Stage
		if name == "" {
			name = start[i].Name
		}
		out = append(out, Step{Name: name, Do: r.Do})
	}
	return out
}

// UndoSteps derives a discard from a list: the undo of every step, in
// reverse order (reconcile discards a create a crash cut short this way).
func UndoSteps(steps []Step) []Step {
	var out []Step
	for i := len(steps) - 1; i >= 0; i-- {
		if fn := undoOf(steps[i]); fn != nil {
			out = append(out, Step{Name: steps[i].Name, Do: fn})
		}
	}
	return out
}

// RunAll runs every step even when some fail (a cleanup tries everything),
// journalling each; the error joins the failures, each named by its step.
func RunAll(ctx context.Context, steps []Step, obs StepObserver) error {
	var errs []error
	for _, st := range steps {
		if err := st.Do(ctx); err != nil {
			obs.Stage(st.Name, StatusFailed, err.Error())
			errs = append(errs, fmt.Errorf("%s: %w", st.Name, err))
			continue
		}
		obs.Stage(st.Name, StatusDone, "")
	}
	return errors.Join(errs...)
}
