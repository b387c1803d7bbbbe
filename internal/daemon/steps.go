package daemon

import (
	"context"
	"errors"
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

// RunSteps runs steps in order. When one fails, every step that succeeded
// is undone in reverse order, on a context detached from ctx's cancellation
// (a cancelled request still cleans up); undo keeps going past failures and
// their errors are joined to the step's error.
func RunSteps(ctx context.Context, steps []Step, obs StepObserver) error {
	for i, st := range steps {
		if err := ctx.Err(); err != nil {
			return undo(ctx, steps[:i], obs, fmt.Errorf("before step %q: %w", st.Name, err))
		}
		if err := st.Do(ctx); err != nil {
			obs.Stage(st.Name, "failed", err.Error())
			return undo(ctx, steps[:i], obs, fmt.Errorf("step %q: %w", st.Name, err))
		}
		obs.Stage(st.Name, "done", "")
	}
	return nil
}

func undo(ctx context.Context, done []Step, obs StepObserver, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	errs := []error{cause}
	for i := len(done) - 1; i >= 0; i-- {
		st := done[i]
		if st.Undo == nil {
			continue
		}
		if err := st.Undo(ctx); err != nil {
			obs.Stage(st.Name, "undo-failed", err.Error())
			errs = append(errs, fmt.Errorf("undo %q: %w", st.Name, err))
			continue
		}
		obs.Stage(st.Name, "undone", "")
	}
	return errors.Join(errs...)
}
