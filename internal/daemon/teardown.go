package daemon

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// teardownTimeout bounds a runtime cleanup (it includes a kill wait).
const teardownTimeout = 2 * time.Minute

// buildTeardownSteps is the release of everything v's recorded runtime
// holds: derived from buildStartSteps (each step's Release, in reverse,
// where Held), never kept by hand.
func (s *Service) buildTeardownSteps(op *operation, v *model.VM) []Step {
	return ReleaseSteps(s.buildStartSteps(op, s.recordedContext(v)))
}

// teardown is the one cleanup path of a VM's runtime: it runs every release
// (ending the VMM process if it is still there) even past failures, and
// records the VM stopped with reason as its last error (empty: none). If
// anything cannot be released the VM is recorded in error with its runtime
// kept, so a later stop, start or delete retries. It runs to the end even
// when the request is cancelled.
func (s *Service) teardown(ctx context.Context, v *model.VM, op *operation, reason string) error {
	return s.teardownAs(ctx, v, op, reason, model.StateStopped)
}

// teardownAs is teardown recording the VM in state (stopped, or error for a
// VMM that died) once everything is released.
func (s *Service) teardownAs(ctx context.Context, v *model.VM, op *operation, reason string, state model.VMState) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	s.exits.tearingDown(v.Runtime.PID, v.Runtime.PIDStartTime) // its watcher stands down
	if err := RunAll(ctx, s.buildTeardownSteps(op, v), op); err != nil {
		op.Stage(StageCleanupRuntime, StatusFailed, err.Error())
		v.State, v.LastError = model.StateError, "runtime cleanup: "+err.Error()
		if werr := s.store.UpdateVM(ctx, v); werr != nil {
			op.log.Warn("could not record the failed cleanup", append(vmAttrs(v), "error", werr)...)
		}
		return fmt.Errorf("clean up vm %q: %w", v.Name, err)
	}
	op.Stage(StageCleanupRuntime, StatusDone, "")
	v.State, v.LastError, v.Runtime = state, reason, model.Runtime{}
	return s.store.UpdateVM(ctx, v)
}

// killProcess SIGKILLs p and waits up to the kill timeout for it to be
// gone. A process already gone is not an error.
func (s *Service) killProcess(ctx context.Context, p vmm.Process) error {
	if p.PID == 0 {
		return nil
	}
	if err := s.signal(p.PID, p.StartTime, syscall.SIGKILL); err != nil {
		return err
	}
	if !system.WaitExit(ctx, p.PID, p.StartTime, s.cfg.KillTimeout) {
		return fmt.Errorf("vmm pid %d still alive %s after SIGKILL", p.PID, s.cfg.KillTimeout)
	}
	return nil
}

func vmmProcess(v *model.VM) vmm.Process {
	return vmm.Process{PID: v.Runtime.PID, StartTime: v.Runtime.PIDStartTime}
}

// missingDriver stands for a recorded driver this daemon was not built
// with: every action fails with why.
type missingDriver struct {
	kind string
	err  error
}

var _ vmm.Driver = missingDriver{}

func (d missingDriver) Kind() string { return d.kind }
func (d missingDriver) Probe(context.Context) vmm.Info {
	return vmm.Info{Kind: d.kind, Reason: d.err.Error()}
}
func (d missingDriver) Validate(vmm.Spec) error { return d.err }
func (d missingDriver) Launch(context.Context, vmm.Spec) (vmm.Process, error) {
	return vmm.Process{}, d.err
}
func (d missingDriver) Boot(context.Context, vmm.Spec) error     { return d.err }
func (d missingDriver) Shutdown(context.Context, vmm.Spec) error { return d.err }
func (d missingDriver) Cleanup(context.Context, vmm.Spec) error  { return d.err }
