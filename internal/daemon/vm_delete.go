package daemon

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
)

// DeleteVM ends a VM if it runs, removes its runtime, disk, record and
// directory, and forgets its host-key pins.
func (s *Service) DeleteVM(ctx context.Context, ref string) error {
	_, err := s.runOp(ctx, ref, "vm.delete", detached, s.deleteLocked)
	return err
}

func (s *Service) deleteLocked(ctx context.Context, v *model.VM, op *operation) error {
	if s.alive(v) {
		// Best effort: the teardown below ends the process anyway.
		if err := s.signal(v.Runtime.PID, v.Runtime.PIDStartTime, syscall.SIGKILL); err != nil {
			op.log.Warn("kill before delete failed", append(vmAttrs(v), "error", err)...)
		} else {
			op.Stage(StageVMMKill, "done", fmt.Sprintf("SIGKILL sent to pid %d", v.Runtime.PID))
		}
	}
	if err := s.teardown(ctx, v, op, ""); err != nil {
		return err
	}
	if err := s.cfg.Storage.Remove(ctx, s.layout.VM(v.ID).RootDisk()); err != nil {
		op.Stage(StageDiskRemove, "failed", err.Error())
		return fmt.Errorf("delete vm %q: remove disk: %w", v.Name, err)
	}
	op.Stage(StageDiskRemove, "done", "")
	if err := s.store.DeleteVM(ctx, v.ID); err != nil {
		return fmt.Errorf("delete vm %q: %w", v.Name, err)
	}
	op.Stage(StageRecordDelete, "done", "")
	var errs []error
	if err := removeAllIn(s.layout.VMsDir(), v.VMDir); err != nil {
		errs = append(errs, fmt.Errorf("remove vm dir: %w", err))
	}
	if err := identity.RemovePins(s.layout.KnownHosts(), v.GuestIP, v.Name); err != nil {
		errs = append(errs, fmt.Errorf("remove host-key pins: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vm %q deleted, but: %w", v.Name, err)
	}
	return nil
}
