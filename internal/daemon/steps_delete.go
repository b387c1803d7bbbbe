package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
)

// buildDeleteSteps is vm.delete, in order: the runtime teardown (which
// kills a running VMM), the disk, the record, then the directory and the
// host-key pins. A failed step stops the delete with what is left intact
// for a retry.
func (s *Service) buildDeleteSteps(op *operation, v *model.VM) []Step {
	return []Step{
		{Name: StageCleanupRuntime, Do: func(ctx context.Context) error {
			if v.Runtime == (model.Runtime{}) && !s.alive(v) {
				return nil
			}
			return s.teardown(ctx, v, op, "")
		}},
		{Name: StepDiskRemove, Do: func(ctx context.Context) error {
			return s.cfg.Storage.Remove(ctx, s.layout.VM(v.ID).RootDisk())
		}},
		{Name: StepDeleteStoreRecord, Do: func(ctx context.Context) error { return s.store.DeleteVM(ctx, v.ID) }},
		{Name: StepDeleteVMDir, Do: func(context.Context) error {
			var errs []error
			if err := removeAllIn(s.layout.VMsDir(), v.VMDir); err != nil {
				errs = append(errs, fmt.Errorf("remove vm dir: %w", err))
			}
			if err := identity.RemovePins(s.layout.KnownHosts(), v.GuestIP, v.Name); err != nil {
				errs = append(errs, fmt.Errorf("remove host-key pins: %w", err))
			}
			return errors.Join(errs...)
		}},
	}
}

// DeleteVM ends a VM if it runs, removes its runtime, disk, record and
// directory, and forgets its host-key pins. It finishes even if the request
// is cancelled.
func (s *Service) DeleteVM(ctx context.Context, ref string) error {
	_, err := s.runOp(ctx, ref, "vm.delete", detached, func(ctx context.Context, v *model.VM, op *operation) error {
		if err := RunSteps(ctx, s.buildDeleteSteps(op, v), op); err != nil {
			return fmt.Errorf("delete vm %q: %w", v.Name, err)
		}
		return nil
	})
	return err
}
