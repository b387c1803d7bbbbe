package daemon

import (
	"context"
	"fmt"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/vmm"
)

// Stages of vm.pause and vm.resume (and of the pauses inside a snapshot,
// a stop or a reconcile).
const (
	StepRecordPaused   = "vm.record-paused"
	StepVMMPause       = "vmm.pause"
	StepVMMResume      = "vmm.resume"
	StageAlreadyPaused = "vm.already-paused"
	StageNotPaused     = "vm.not-paused"
	StageReadoptPaused = "vm.readopted-paused"
)

// pauser is v's driver as a Pauser, or a NotSupported error.
func (s *Service) pauser(v *model.VM) (vmm.Pauser, error) {
	d, err := s.driver(v.VMM)
	if err != nil {
		return nil, err
	}
	p, ok := d.(vmm.Pauser)
	if !ok {
		return nil, errdefs.NotSupported("the %s driver cannot pause a vm", v.VMM)
	}
	return p, nil
}

// PauseVM freezes a running VM's vCPUs; its VMM (and memory) stay. A
// paused VM is returned as is.
func (s *Service) PauseVM(ctx context.Context, ref string) (*model.VM, error) {
	return s.runOp(ctx, ref, "vm.pause", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		return s.pauseLocked(ctx, v, op)
	})
}

// pauseLocked pauses v, recording it paused first: a daemon that dies
// between the two finds a paused record and pauses the VM again
// (readoptPaused), so the record never says running while the guest is
// stopped. A failed pause records it running again.
func (s *Service) pauseLocked(ctx context.Context, v *model.VM, op *operation) error {
	alive := s.alive(v)
	if alive && v.State == model.StatePaused {
		op.Note(StageAlreadyPaused, fmt.Sprintf("pid %d", v.Runtime.PID))
		return nil
	}
	if !alive || v.State != model.StateRunning {
		return errdefs.FailedPrecondition("vm %q is %s, not running (hint: only a running vm can be paused)", v.Name, v.State)
	}
	p, err := s.pauser(v)
	if err != nil {
		return err
	}
	return RunSteps(ctx, []Step{
		{Name: StepRecordPaused,
			Do: func(ctx context.Context) error {
				v.State = model.StatePaused
				return s.store.UpdateVM(ctx, v)
			},
			Undo: func(ctx context.Context) error {
				v.State = model.StateRunning
				return s.store.UpdateVM(ctx, v)
			}},
		{Name: StepVMMPause, Do: func(ctx context.Context) error { return p.Pause(ctx, s.runtimeSpec(v)) }},
	}, op)
}

// ResumeVM lets a paused VM run again. A running VM is returned as is.
func (s *Service) ResumeVM(ctx context.Context, ref string) (*model.VM, error) {
	return s.runOp(ctx, ref, "vm.resume", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		return s.resumeLocked(ctx, v, op)
	})
}

// resumeLocked resumes v, then records it running (the reverse order of a
// pause, for the same reason).
func (s *Service) resumeLocked(ctx context.Context, v *model.VM, op *operation) error {
	alive := s.alive(v)
	if alive && v.State == model.StateRunning {
		op.Note(StageAlreadyRunning, fmt.Sprintf("pid %d", v.Runtime.PID))
		return nil
	}
	if !alive || v.State != model.StatePaused {
		return errdefs.FailedPrecondition("vm %q is %s, not paused (hint: banger vm start %s)", v.Name, v.State, v.Name)
	}
	p, err := s.pauser(v)
	if err != nil {
		return err
	}
	return RunSteps(ctx, []Step{
		{Name: StepVMMResume, Do: func(ctx context.Context) error { return p.Resume(ctx, s.runtimeSpec(v)) }},
		{Name: StepRecordRunning, Do: func(ctx context.Context) error {
			v.State = model.StateRunning
			return s.store.UpdateVM(ctx, v)
		}},
	}, op)
}

// resumeForStop resumes a paused VM so that it can shut down gracefully;
// the stop records what follows.
func (s *Service) resumeForStop(ctx context.Context, v *model.VM, op *operation) error {
	p, err := s.pauser(v)
	if err == nil {
		err = p.Resume(ctx, s.runtimeSpec(v))
	}
	if err != nil {
		op.Stage(StepVMMResume, StatusFailed, err.Error())
		return err
	}
	op.Stage(StepVMMResume, StatusDone, "resumed to shut down gracefully")
	return nil
}

// readoptPaused is the reconcile of a paused VM whose VMM is alive: it is
// kept paused, and paused again (idempotent) in case the daemon died
// between recording a pause and making it, or while a snapshot had it
// paused.
func (s *Service) readoptPaused(v *model.VM) []Step {
	return []Step{{Name: StageReadoptPaused, Do: func(ctx context.Context) error {
		p, err := s.pauser(v)
		if err != nil {
			return err
		}
		s.log.Info("re-adopted paused vm", vmAttrs(v)...)
		return p.Pause(ctx, s.runtimeSpec(v))
	}}}
}
