package daemon

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/system"
	"golang.org/x/sys/unix"
)

// StopOptions tune a stop (and the stop half of a restart).
type StopOptions struct {
	// Timeout bounds the wait for the guest to power off; 0: the daemon's
	// default. When it passes, the VMM is killed.
	Timeout time.Duration
	// Force kills the VMM when the graceful request cannot be sent; without
	// it such a stop fails and leaves the VM running.
	Force bool
}

func (s *Service) stopOptions(o StopOptions) (StopOptions, error) {
	if o.Timeout < 0 {
		return o, errdefs.InvalidArgument("stop timeout %s is negative", o.Timeout)
	}
	if o.Timeout == 0 {
		o.Timeout = s.cfg.GracefulTimeout
	}
	return o, nil
}

// StopVM shuts a VM down gracefully: Ctrl-Alt-Del, then up to the timeout
// for the VMM to exit; then the runtime teardown, which kills the VMM if the
// guest did not power off. A request that cannot be sent fails the stop and
// leaves the VM running, unless opts.Force.
func (s *Service) StopVM(ctx context.Context, ref string, opts StopOptions) (*model.VM, error) {
	opts, err := s.stopOptions(opts)
	if err != nil {
		return nil, err
	}
	return s.runOp(ctx, ref, "vm.stop", detached, func(ctx context.Context, v *model.VM, op *operation) error {
		return s.stopLocked(ctx, v, op, opts)
	})
}

// RestartVM stops then starts a VM, holding its lock throughout. The stop
// half finishes even if the request is cancelled.
func (s *Service) RestartVM(ctx context.Context, ref string, opts StopOptions) (*model.VM, error) {
	opts, err := s.stopOptions(opts)
	if err != nil {
		return nil, err
	}
	return s.runOp(ctx, ref, "vm.restart", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		if err := s.stopLocked(context.WithoutCancel(ctx), v, op, opts); err != nil {
			return err
		}
		_, err := s.startLocked(ctx, v, op)
		return err
	})
}

// beginStopping records the VM stopping if its VMM runs; if it does not,
// it runs the stale-runtime teardown instead and reports done.
func (s *Service) beginStopping(ctx context.Context, v *model.VM, op *operation) (done bool, err error) {
	if !s.alive(v) {
		op.Note(StageVMMNotRunning, "cleaning up what is left of the runtime")
		return true, s.teardown(ctx, v, op, "")
	}
	v.State = model.StateStopping
	s.exits.tearingDown(v.Runtime.PID, v.Runtime.PIDStartTime) // its watcher stands down
	return false, s.store.UpdateVM(ctx, v)
}

// stillRunning records v running (or paused: prev) again after a stop or
// kill that could not reach its VMM, and returns err saying so.
func (s *Service) stillRunning(ctx context.Context, v *model.VM, op *operation, prev model.VMState, err error, hint string) error {
	v.State = model.StateRunning
	if prev == model.StatePaused {
		v.State = prev
	}
	s.exits.torndown(v.Runtime.PID, v.Runtime.PIDStartTime) // its watcher watches again
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if werr := s.store.UpdateVM(wctx, v); werr != nil {
		op.log.Warn("could not record the vm running again", append(vmAttrs(v), "error", werr)...)
	}
	return errdefs.WithClass(errdefs.ClassOf(err), fmt.Errorf("vm %q is still %s: %w (hint: %s)", v.Name, v.State, err, hint))
}

func (s *Service) stopLocked(ctx context.Context, v *model.VM, op *operation, opts StopOptions) error {
	if v.State == model.StatePaused && s.alive(v) {
		// A paused guest cannot hear Ctrl-Alt-Del: it is resumed first.
		if err := s.resumeForStop(ctx, v, op); err != nil {
			if !opts.Force {
				return errdefs.WithClass(errdefs.ClassOf(err), fmt.Errorf("vm %q is still paused: %w (hint: banger vm stop --force %s kills it)", v.Name, err, v.Name))
			}
			op.Note(StageForce, "--force: the vmm is killed")
			return s.teardown(ctx, v, op, "")
		}
	}
	if done, err := s.beginStopping(ctx, v, op); done || err != nil {
		return err
	}
	pid, st := v.Runtime.PID, v.Runtime.PIDStartTime
	err := s.recordedContext(v).drv.Shutdown(ctx, s.runtimeSpec(v))
	if err != nil {
		op.Stage(StageGracefulShutdown, StatusFailed, err.Error())
		if !opts.Force {
			return s.stillRunning(ctx, v, op, model.StateRunning, fmt.Errorf("graceful shutdown request failed: %w", err),
				fmt.Sprintf("banger vm stop --force %s kills it", v.Name))
		}
		op.Note(StageForce, "--force: the vmm is killed")
		return s.teardown(ctx, v, op, "")
	}
	op.Stage(StageGracefulShutdown, StatusDone, "ctrl-alt-del sent")
	began := time.Now()
	if system.WaitExit(ctx, pid, st, opts.Timeout) {
		op.Stage(StageWaitForExit, StatusDone, fmt.Sprintf("vmm exited after %s", time.Since(began).Round(time.Millisecond)))
	} else {
		op.Note(StageGracefulShutdownTimeout, fmt.Sprintf("the guest did not power off within %s; the vmm is killed", opts.Timeout))
	}
	return s.teardown(ctx, v, op, "")
}

// KillVM sends sig (default TERM) to the VMM, waits up to the kill timeout
// for it to exit (then kills it), and tears the runtime down. A signal
// that cannot be delivered fails the kill and leaves the VM running.
func (s *Service) KillVM(ctx context.Context, ref, signal string) (*model.VM, error) {
	sig, err := system.ParseSignal(signal)
	if err != nil {
		return nil, errdefs.InvalidArgument("%w", err)
	}
	return s.runOp(ctx, ref, "vm.kill", detached, func(ctx context.Context, v *model.VM, op *operation) error {
		return s.killLocked(ctx, v, op, sig)
	})
}

func (s *Service) killLocked(ctx context.Context, v *model.VM, op *operation, sig syscall.Signal) error {
	prev := v.State // a paused VM takes the signal as it is
	if done, err := s.beginStopping(ctx, v, op); done || err != nil {
		return err
	}
	pid, st := v.Runtime.PID, v.Runtime.PIDStartTime
	name := unix.SignalName(sig)
	if err := s.signal(pid, st, sig); err != nil {
		op.Stage(StageSendSignal, StatusFailed, err.Error())
		return s.stillRunning(ctx, v, op, prev, err, "check the daemon's log; banger vm kill --signal KILL, or delete")
	}
	op.Stage(StageSendSignal, StatusDone, fmt.Sprintf("%s sent to pid %d", name, pid))
	if system.WaitExit(ctx, pid, st, s.cfg.KillTimeout) {
		op.Stage(StageWaitForExit, StatusDone, fmt.Sprintf("pid %d exited", pid))
	} else {
		op.Note(StageSignalTimeout, fmt.Sprintf("pid %d did not exit within %s of %s; it is killed", pid, s.cfg.KillTimeout, name))
	}
	return s.teardown(ctx, v, op, "")
}
