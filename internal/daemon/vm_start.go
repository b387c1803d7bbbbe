package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Step names of vm.start.
const (
	StepImageCheck    = "image.check"
	StepNetworkTap    = "network.tap"
	StepVMMPrepare    = "vmm.prepare"
	StepVMMLaunch     = "vmm.launch"
	StepVMMBoot       = "vmm.boot"
	StepRecordRunning = "vm.record-running"
)

// baseKernelArgs are what every banger guest boots with; drivers add their
// console settings, images add what they need.
const baseKernelArgs = "root=/dev/vda rw panic=1"

// StartVM starts a VM. A running VM is returned as is.
func (s *Service) StartVM(ctx context.Context, ref string) (*model.VM, error) {
	return s.runOp(ctx, ref, "vm.start", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		_, err := s.startLocked(ctx, v, op)
		return err
	})
}

// startLocked runs the start steps; the caller holds the VM's lock.
func (s *Service) startLocked(ctx context.Context, v *model.VM, op *operation) (*model.VM, error) {
	if s.alive(v) {
		if v.State == model.StateRunning {
			op.Note(StageAlreadyRunning, fmt.Sprintf("pid %d", v.Runtime.PID))
			op.log.Info("vm already running", "pid", v.Runtime.PID)
			return v, nil
		}
		// A VMM left by a start whose rollback failed, or a stop cut short:
		// end it before starting anew, never run two on one disk.
		op.Note(StageVMMLeftover, fmt.Sprintf("pid %d from an unfinished operation (state %s): cleaning up first", v.Runtime.PID, v.State))
		if err := s.teardown(ctx, v, op, ""); err != nil {
			return v, err
		}
	}
	drv, err := s.driver(v.VMM)
	if err != nil {
		return v, err
	}
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return v, fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	spec, err := s.startSpec(v, img)
	if err != nil {
		return v, err
	}
	info := drv.Probe(ctx) // once per start: it may run the VMM binary
	if spec.Kernel, err = kernelFor(info, img); err != nil {
		return v, err
	}
	if err := drv.Validate(spec); err != nil {
		return v, err
	}

	// Record the names before the host is touched, so whatever a crash
	// leaves behind can be found and removed; the pid is recorded the
	// moment the VMM process exists, before the driver waits on it.
	v.State, v.LastError = model.StateStarting, ""
	v.Runtime = model.Runtime{ControlSocket: spec.ControlSocket, VsockPath: spec.VsockPath, VsockCID: spec.VsockCID,
		Tap: spec.Tap, DMName: layout.DMName(v.Short())}
	if err := s.store.UpdateVM(ctx, v); err != nil {
		return v, err
	}
	spec.OnSpawn = func(p vmm.Process) error {
		v.Runtime.PID, v.Runtime.PIDStartTime, v.Runtime.Accel = p.PID, p.StartTime, info.Accel
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		return s.store.UpdateVM(wctx, v)
	}

	var proc vmm.Process
	steps := []Step{
		{Name: StepImageCheck, Do: func(context.Context) error { return checkBootFiles(spec) }},
	}
	if spec.Tap != "" {
		owner := 0
		if um, ok := drv.(vmm.UserMapper); ok {
			owner, _ = um.RunAs(spec)
		}
		steps = append(steps, Step{Name: StepNetworkTap,
			Do:   func(ctx context.Context) error { return s.cfg.Network.CreateTap(ctx, spec.Tap, owner) },
			Undo: func(ctx context.Context) error { return s.cfg.Network.DeleteTap(ctx, spec.Tap) }})
	}
	steps = append(steps, []Step{
		{Name: StepVMMPrepare,
			Do:   func(ctx context.Context) error { return drv.Cleanup(ctx, spec) }, // files a crash left
			Undo: func(ctx context.Context) error { return drv.Cleanup(ctx, spec) }},
		{Name: StepVMMLaunch,
			Do: func(ctx context.Context) error {
				p, err := drv.Launch(ctx, spec)
				proc = p
				return err
			},
			Undo: func(ctx context.Context) error { return s.killProcess(ctx, proc) }},
		{Name: StepVMMBoot, Do: func(ctx context.Context) error { return drv.Boot(ctx, spec) }},
	}...)
	steps = append(steps, s.capabilitySteps(v)...)
	steps = append(steps, Step{Name: StepRecordRunning, Do: func(ctx context.Context) error {
		v.State, v.Runtime.StartedAt = model.StateRunning, time.Now().UTC()
		return s.store.UpdateVM(ctx, v)
	}})
	if err := RunSteps(ctx, steps, op); err != nil {
		return v, s.recordStartFailure(ctx, v, op, err)
	}
	op.log.Info("vm running", "pid", v.Runtime.PID, "accel", v.Runtime.Accel)
	return v, nil
}

// recordStartFailure records state=error with the message on a context
// that outlives the request, and clears the runtime: its handles are dead
// once the rollback is complete. If an undo failed, the runtime is kept
// instead, so that the VMM or tap it could not remove is not orphaned: the
// next start, stop or delete (or the daemon's reconcile) finishes the job.
// The error returned is the start's, with its class, naming the VM's log; a
// failed write is logged, not returned.
func (s *Service) recordStartFailure(ctx context.Context, v *model.VM, op *operation, cause error) error {
	err := errdefs.WithClass(errdefs.ClassOf(cause), fmt.Errorf("start vm %q: %w (vm log: %s)", v.Name, cause, v.LogPath))
	v.State, v.LastError = model.StateError, err.Error()
	var se *StepError
	if !errors.As(cause, &se) || se.RolledBack() {
		v.Runtime = model.Runtime{}
	} else {
		op.log.Warn("rollback incomplete: keeping the runtime for a later cleanup", append(vmAttrs(v), "undo_errors", errors.Join(se.UndoErrs...))...)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if werr := s.store.UpdateVM(wctx, v); werr != nil {
		op.log.Warn("could not record the failed start", append(vmAttrs(v), "error", werr, "start_error", err)...)
	}
	return err
}

// startSpec derives every per-VM name from the short ID, once.
func (s *Service) startSpec(v *model.VM, img *model.Image) (vmm.Spec, error) {
	short := v.Short()
	spec := s.runtimeSpec(v)
	spec.Kernel, spec.Initrd = img.KernelPath, img.InitrdPath
	spec.KernelArgs = strings.TrimSpace(baseKernelArgs + " " + img.Cmdline)
	spec.ControlSocket = s.layout.VMMSocket(short)
	spec.VsockPath = s.layout.VsockPath(short)
	if s.cfg.Network != nil {
		spec.Tap = layout.TapName(short)
	}
	if spec.VsockCID == 0 {
		cid, err := network.CIDFor(v.GuestIP)
		if err != nil {
			return spec, err
		}
		spec.VsockCID = cid
	}
	for _, p := range []string{spec.ControlSocket, spec.VsockPath} {
		if err := layout.CheckSocketPath(p); err != nil {
			return spec, errdefs.InvalidArgument("%w", err)
		}
	}
	return spec, nil
}

// runtimeSpec is the spec of a VM as recorded: what teardown acts on.
func (s *Service) runtimeSpec(v *model.VM) vmm.Spec {
	return vmm.Spec{
		ID: v.ID, Name: v.Name, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
		RootDisk:      s.layout.VM(v.ID).RootDisk(),
		ControlSocket: v.Runtime.ControlSocket, VsockPath: v.Runtime.VsockPath, VsockCID: v.Runtime.VsockCID,
		Tap: v.Runtime.Tap, MAC: network.MACFor(v.ID), LogPath: v.LogPath, VMDir: v.VMDir,
	}
}

// kernelFor picks the image's kernel the driver can boot.
func kernelFor(info vmm.Info, img *model.Image) (string, error) {
	if !info.Features.KernelELF {
		return img.KernelPath, nil
	}
	if img.VmlinuxPath == "" {
		return "", errdefs.FailedPrecondition("image %q has no ELF vmlinux, which %s boots (hint: import one with --kernel vmlinux, or use an image banger built)", img.Name, info.Kind)
	}
	return img.VmlinuxPath, nil
}

func checkBootFiles(spec vmm.Spec) error {
	check := func(what, p string) error {
		if p == "" {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return errdefs.FailedPrecondition("%s %s is missing (hint: re-import or rebuild the image)", what, p)
			}
			return errdefs.FailedPrecondition("%s %s: %w", what, p, err)
		}
		return f.Close()
	}
	return errors.Join(check("kernel", spec.Kernel), check("initrd", spec.Initrd), check("root disk", spec.RootDisk))
}

// killProcess SIGKILLs p and waits for it to be gone.
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
