package daemon

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// teardownTimeout bounds a runtime cleanup (it includes a kill wait).
const teardownTimeout = 2 * time.Minute

// StopVM shuts a VM down gracefully: Ctrl-Alt-Del, then up to timeout
// (0: the daemon's default) for the VMM to exit; then the runtime cleanup,
// which ends the process if the guest did not.
func (s *Service) StopVM(ctx context.Context, ref string, timeout time.Duration) (*model.VM, error) {
	if timeout < 0 {
		return nil, errdefs.InvalidArgument("stop timeout %s is negative", timeout)
	}
	if timeout == 0 {
		timeout = s.cfg.GracefulTimeout
	}
	return s.runOp(ctx, ref, "vm.stop", detached, func(ctx context.Context, v *model.VM, op *operation) error {
		return s.stopLocked(ctx, v, op, timeout)
	})
}

// detached operations (stop, kill, delete), once begun, are finished even
// if the request is cancelled: a half-stopped VM helps no one. Waiting for
// the VM's lock still ends with the request.
const detached = true

// runOp resolves and locks ref, journals kind and runs fn under the lock;
// with detach, fn runs on a context the request's cancellation cannot end.
func (s *Service) runOp(ctx context.Context, ref, kind string, detach bool, fn func(ctx context.Context, v *model.VM, op *operation) error) (*model.VM, error) {
	var out *model.VM
	err := s.withVM(ctx, ref, func(v *model.VM) error {
		if detach {
			ctx = context.WithoutCancel(ctx)
		}
		op := s.begin(ctx, kind, v)
		out = v
		return op.finish(fn(ctx, v, op))
	})
	return out, err
}

// beginStopping records the VM stopping if its VMM runs; if it does not,
// it runs the stale-runtime cleanup instead and reports done.
func (s *Service) beginStopping(ctx context.Context, v *model.VM, op *operation) (done bool, err error) {
	if !s.alive(v) {
		op.Note(StageVMMNotRunning, "cleaning up what is left of the runtime")
		return true, s.teardown(ctx, v, op, "")
	}
	v.State = model.StateStopping
	return false, s.store.UpdateVM(ctx, v)
}

func (s *Service) stopLocked(ctx context.Context, v *model.VM, op *operation, timeout time.Duration) error {
	if done, err := s.beginStopping(ctx, v, op); done || err != nil {
		return err
	}
	pid, st := v.Runtime.PID, v.Runtime.PIDStartTime
	drv, err := s.driver(v.VMM)
	if err == nil {
		err = drv.Shutdown(ctx, s.runtimeSpec(v))
	}
	if err != nil {
		// Not fatal: the cleanup below ends the process.
		op.Stage(StageShutdownRequest, "failed", err.Error())
	} else {
		op.Stage(StageShutdownRequest, "done", "ctrl-alt-del sent")
		began := time.Now()
		if system.WaitExit(ctx, pid, st, timeout) {
			op.Stage(StageShutdownWait, "done", fmt.Sprintf("vmm exited after %s", time.Since(began).Round(time.Millisecond)))
		} else {
			op.Note(StageShutdownTimeout, fmt.Sprintf("the guest did not power off within %s; the vmm will be killed", timeout))
		}
	}
	return s.teardown(ctx, v, op, "")
}

// KillVM sends sig (default TERM) to the VMM, waits up to the kill timeout
// for it to exit, then cleans up.
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
	if done, err := s.beginStopping(ctx, v, op); done || err != nil {
		return err
	}
	pid, st := v.Runtime.PID, v.Runtime.PIDStartTime
	name := unix.SignalName(sig)
	if err := s.signal(pid, st, sig); err != nil {
		op.Stage(StageVMMSignal, "failed", err.Error())
	} else {
		op.Stage(StageVMMSignal, "done", fmt.Sprintf("%s sent to pid %d", name, pid))
		if system.WaitExit(ctx, pid, st, s.cfg.KillTimeout) {
			op.Stage(StageVMMExit, "done", fmt.Sprintf("pid %d exited", pid))
		} else {
			op.Note(StageKillTimeout, fmt.Sprintf("pid %d did not exit within %s of %s; it will be killed", pid, s.cfg.KillTimeout, name))
		}
	}
	return s.teardown(ctx, v, op, "")
}

// teardown is the one cleanup path of a VM's runtime: it ends the VMM
// process if it is still there, removes what the driver made, and records
// the VM stopped with reason as its last error (empty: none). If anything
// cannot be removed the VM is recorded in error with its runtime kept, so
// a later stop or delete retries.
func (s *Service) teardown(ctx context.Context, v *model.VM, op *operation, reason string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	var errs []error
	if s.alive(v) {
		if err := s.killProcess(ctx, vmmProcess(v)); err != nil {
			errs = append(errs, err)
		} else {
			op.Stage(StageVMMKill, "done", fmt.Sprintf("pid %d killed", v.Runtime.PID))
		}
	}
	if err := s.cleanupCapabilities(ctx, v, op); err != nil {
		errs = append(errs, err)
	}
	if drv, err := s.driver(v.VMM); err != nil {
		errs = append(errs, err)
	} else if err := drv.Cleanup(ctx, s.runtimeSpec(v)); err != nil {
		errs = append(errs, err)
	}
	if v.Runtime.Tap != "" && s.cfg.Network != nil {
		if err := s.cfg.Network.DeleteTap(ctx, v.Runtime.Tap); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		op.Stage(StageRuntimeCleanup, "failed", err.Error())
		v.State, v.LastError = model.StateError, "runtime cleanup: "+err.Error()
		if werr := s.store.UpdateVM(ctx, v); werr != nil {
			op.log.Warn("could not record the failed cleanup", append(vmAttrs(v), "error", werr)...)
		}
		return fmt.Errorf("clean up vm %q: %w", v.Name, err)
	}
	op.Stage(StageRuntimeCleanup, "done", "")
	v.State, v.LastError, v.Runtime = model.StateStopped, reason, model.Runtime{}
	return s.store.UpdateVM(ctx, v)
}

func vmmProcess(v *model.VM) vmm.Process {
	return vmm.Process{PID: v.Runtime.PID, StartTime: v.Runtime.PIDStartTime}
}

// RestartVM stops then starts a VM, holding its lock throughout.
func (s *Service) RestartVM(ctx context.Context, ref string, timeout time.Duration) (*model.VM, error) {
	if timeout < 0 {
		return nil, errdefs.InvalidArgument("stop timeout %s is negative", timeout)
	}
	if timeout == 0 {
		timeout = s.cfg.GracefulTimeout
	}
	return s.runOp(ctx, ref, "vm.restart", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		if err := s.stopLocked(context.WithoutCancel(ctx), v, op, timeout); err != nil {
			return err
		}
		_, err := s.startLocked(ctx, v, op)
		return err
	})
}
