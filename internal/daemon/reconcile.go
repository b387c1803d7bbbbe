package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// Reconcile brings the records in line with the host after a daemon start.
// Only records that claim a runtime are looked at (starting, running,
// stopping, error with a runtime kept, and creating): a stopped VM holds
// nothing on the host. Each is reconciled by the steps buildReconcileSteps
// picks for it.
func (s *Service) Reconcile(ctx context.Context) error {
	ctx = store.Recovery(ctx) // its records may use the state dir's reserve
	unfinished, err := s.store.ListUnfinishedOperations(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	defer func() { s.closeInterrupted(ctx, unfinished) }()
	vms, err := s.store.ListVMsClaimingRuntime(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	var errs []error
	for _, listed := range vms {
		err := s.withVM(ctx, listed.ID, func(v *model.VM) error {
			op := s.newOperation("vm.reconcile", v)
			steps := s.buildReconcileSteps(op, v)
			if len(steps) == 0 {
				return nil
			}
			op.open(ctx)
			return op.finish(RunSteps(ctx, steps, op))
		})
		if err == nil {
			s.watchIfRunning(ctx, listed.ID)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// watchIfRunning starts the watcher of VM id if reconcile left it running
// (re-adopted).
func (s *Service) watchIfRunning(ctx context.Context, id string) {
	v, err := s.store.GetVM(ctx, id)
	if err == nil && v.State == model.StateRunning && s.alive(v) {
		s.watchVMM(v)
	}
}

// buildReconcileSteps is what brings v in line with the host:
//   - creating: the create a crash cut short is discarded (the undos of
//     the create steps, in reverse);
//   - error with a runtime kept (a start whose rollback failed): teardown;
//   - running or stopping, with the same VMM process (pid and start time)
//     alive: re-adopted, recorded running;
//   - paused, with its VMM alive: re-adopted paused (readoptPaused);
//   - otherwise (the VMM exited, or a start was cut short): teardown,
//     recorded stopped with the reason.
func (s *Service) buildReconcileSteps(op *operation, v *model.VM) []Step {
	teardown := func(name, reason string) []Step {
		return []Step{{Name: name, Do: func(ctx context.Context) error { return s.teardown(ctx, v, op, reason) }}}
	}
	switch v.State {
	case model.StateCreating:
		s.log.Warn("discarding a create the daemon did not finish", vmAttrs(v)...)
		op.Note(StageCreateDiscarded, "a create the daemon did not finish")
		return UndoSteps(s.buildCreateSteps(op, &createCtx{v: v}))
	case model.StateStopped:
		return nil
	case model.StateError:
		if v.Runtime == (model.Runtime{}) {
			return nil
		}
		op.Note(StageRuntimeLeftover, fmt.Sprintf("pid %d alive=%v", v.Runtime.PID, s.alive(v)))
		return teardown(StageCleanupRuntime, "cleaned up what a failed start left: "+v.LastError)
	}
	alive := s.alive(v)
	if alive && v.State != model.StateStarting {
		s.log.Info("re-adopted running vm", vmAttrs(v)...)
		if v.State == model.StateRunning {
			return nil
		}
		if v.State == model.StatePaused {
			return s.readoptPaused(v)
		}
		// A stop cut short: the VM is still up.
		return []Step{{Name: StageVMReadopted, Do: func(ctx context.Context) error {
			v.State = model.StateRunning
			return s.store.UpdateVM(ctx, v)
		}}}
	}
	var reason string
	if alive {
		reason = fmt.Sprintf("a start was cut short by a daemon exit; vmm pid %d was stopped", v.Runtime.PID)
	} else {
		reason = fmt.Sprintf("vmm process %d exited while the daemon was not running", v.Runtime.PID)
		// A running VM's VMM that ended on its own: its supervisor wrote
		// how (a guest power-off is a clean stop).
		if e, ok := vmm.ReadExitFile(v.VMDir, v.Runtime.PID, v.Runtime.PIDStartTime); ok && v.State == model.StateRunning {
			v.LastExit = exitOf(e, true, v.LogPath)
			reason = fmt.Sprintf("vmm process %d %s, while the daemon was not running", v.Runtime.PID, v.LastExit.Reason())
			state := model.StateStopped
			if !v.LastExit.Clean() {
				state = model.StateError
			}
			op.Note(StageVMMGone, reason)
			return []Step{{Name: StageCleanupRuntime, Do: func(ctx context.Context) error { return s.teardownAs(ctx, v, op, "vmm "+v.LastExit.Reason(), state) }}}
		}
	}
	op.Note(StageVMMGone, reason)
	return teardown(StageCleanupRuntime, reason)
}
