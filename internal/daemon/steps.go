package daemon

import (
	"context"
	"fmt"
	"time"
)

// Step is one named, undoable part of a long operation. Undo may be nil.
// Undo must be idempotent: it runs on a context that is not the request's.
type Step struct {
	Name string
	Do   func(ctx context.Context) error
	Undo func(ctx context.Context) error
}

// StepObserver hears about steps as they pass (the operation journal).
type StepObserver interface {
	Stage(name, status, detail string)
}

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
			obs.Stage(st.Name, "failed", err.Error())
			return undo(ctx, steps[:i], obs, &StepError{Step: st.Name, Err: err})
		}
		obs.Stage(st.Name, "done", "")
	}
	return nil
}

func undo(ctx context.Context, done []Step, obs StepObserver, fail *StepError) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	for i := len(done) - 1; i >= 0; i-- {
		st := done[i]
		if st.Undo == nil {
			continue
		}
		if err := st.Undo(ctx); err != nil {
			obs.Stage(st.Name, "undo-failed", err.Error())
			fail.UndoErrs = append(fail.UndoErrs, fmt.Errorf("undo %q: %w", st.Name, err))
			continue
		}
		obs.Stage(st.Name, "undone", "")
	}
	return fail
}
