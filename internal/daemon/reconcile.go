package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-vm/banger/internal/model"
)

// Reconcile brings the records in line with the host after a daemon start:
// a VM recorded as running whose VMM process is still the same process
// (pid and start time) is re-adopted; otherwise its runtime is cleaned up
// and it is recorded stopped with the reason. Creates that a crash cut
// short are discarded.
func (s *Service) Reconcile(ctx context.Context) error {
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	var errs []error
	for _, listed := range vms {
		err := s.withVM(ctx, listed.ID, func(v *model.VM) error { return s.reconcileLocked(ctx, v) })
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Service) reconcileLocked(ctx context.Context, v *model.VM) error {
	switch v.State {
	case model.StateCreating:
		s.log.Warn("discarding a create the daemon did not finish", vmAttrs(v)...)
		s.discardCreate(ctx, v)
		return nil
	case model.StateStopped:
		return nil
	case model.StateError:
		if v.Runtime == (model.Runtime{}) {
			return nil
		}
		// A start whose rollback failed kept its runtime: finish it.
		op := s.begin(ctx, "vm.reconcile", v)
		reason := "cleaned up what a failed start left: " + v.LastError
		op.Note(StageRuntimeLeftover, fmt.Sprintf("pid %d alive=%v", v.Runtime.PID, s.alive(v)))
		return op.finish(s.teardown(ctx, v, op, reason))
	}
	alive := s.alive(v)
	if alive && v.State != model.StateStarting {
		// Running (or a stop that was cut short): the VM is still up.
		if v.State != model.StateRunning {
			v.State = model.StateRunning
			if err := s.store.UpdateVM(ctx, v); err != nil {
				return err
			}
		}
		s.log.Info("re-adopted running vm", vmAttrs(v)...)
		return nil
	}
	op := s.begin(ctx, "vm.reconcile", v)
	var reason string
	if alive {
		reason = fmt.Sprintf("a start was cut short by a daemon exit; vmm pid %d was stopped", v.Runtime.PID)
	} else {
		reason = fmt.Sprintf("vmm process %d exited while the daemon was not running", v.Runtime.PID)
	}
	op.Note(StageVMMGone, reason)
	return op.finish(s.teardown(ctx, v, op, reason))
}
