package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// baseKernelArgs are what every banger guest boots with; drivers add their
// console settings, images add what they need.
const baseKernelArgs = "root=/dev/vda rw panic=1"

// startCtx is what the start steps act on. For a start it is derived from
// the image and the VM's short ID (startContext); for a teardown, from the
// VM's recorded runtime (recordedContext): the same steps, whose Releases
// then act on what the record names.
type startCtx struct {
	v    *model.VM
	drv  vmm.Driver
	spec vmm.Spec
	info vmm.Info // the driver's probe (start only)
	// restore, if set, is the snapshot this start restores instead of
	// booting (vm restore, or a fork's first start).
	restore *restorePlan
}

// buildStartSteps is vm.start, in order. A step that creates a host
// resource the running VM keeps declares its Release: teardown runs those
// (ReleaseSteps), so a new resource is added here and nowhere else.
func (s *Service) buildStartSteps(op *operation, sc *startCtx) []Step {
	steps := []Step{
		{Name: StepImageCheck, Do: func(context.Context) error { return checkBootFiles(sc.spec) }},
		s.diskAttachStep(sc),
	}
	if s.cfg.Network != nil && sc.spec.Tap != "" {
		steps = append(steps, Step{Name: StepNetworkTap,
			Do: func(ctx context.Context) error {
				owner := 0
				if um, ok := sc.drv.(vmm.UserMapper); ok {
					owner, _ = um.RunAs(sc.spec)
				}
				if err := s.cfg.Network.CreateTap(ctx, sc.spec.Tap, owner); err != nil {
					return err
				}
				// The address may have been another VM's, or this VM's
				// template's (a fork): the host must resolve it anew.
				if ip, err := netip.ParseAddr(sc.v.GuestIP); err == nil {
					if err := s.cfg.Network.ForgetNeighbour(ip); err != nil {
						op.log.Warn("could not forget the host's neighbour entry", append(vmAttrs(sc.v), "error", err)...)
					}
				}
				return nil
			},
			Release: &Release{Held: func() bool { return sc.v.Runtime.Tap != "" },
				Do: func(ctx context.Context) error { return s.cfg.Network.DeleteTap(ctx, sc.spec.Tap) }}})
		if nh := s.netPolicyHost(); nh != nil {
			steps = append(steps, s.netPolicyStep(sc, nh))
		}
	}
	steps = append(steps,
		Step{Name: StepCleanupStaleRuntime,
			// Files a crash left (sockets, a jail) go before the launch
			// makes them anew; the release removes what the launch made.
			Do: func(ctx context.Context) error { return sc.drv.Cleanup(ctx, sc.spec) },
			Release: &Release{Stage: StageVMMCleanup, Do: func(ctx context.Context) error {
				s.agents.drop(sc.v.ID) // the guest agent's connection goes with the VMM's sockets
				return sc.drv.Cleanup(ctx, sc.spec)
			}}},
		Step{Name: StepVMMLaunch,
			// The pid is recorded by spec.OnSpawn the moment the process
			// exists: the release finds it in the record.
			Do: func(ctx context.Context) error { _, err := sc.drv.Launch(ctx, sc.spec); return err },
			Release: &Release{Stage: StageKillRunningVM, Held: func() bool { return s.alive(sc.v) },
				Do: func(ctx context.Context) error { return s.killProcess(ctx, vmmProcess(sc.v)) }}},
		Step{Name: StepVMMBoot, Do: func(ctx context.Context) error { return sc.drv.Boot(ctx, sc.spec) }},
	)
	for _, c := range s.caps {
		if !c.Enabled(sc.v) {
			continue
		}
		steps = append(steps, Step{Name: "cap." + c.Name(),
			Do: func(ctx context.Context) error { return c.Prepare(ctx, sc.v) },
			Release: &Release{Do: func(ctx context.Context) error {
				err := c.Cleanup(ctx, sc.v)
				if err != nil {
					op.log.Warn("capability cleanup failed", append(vmAttrs(sc.v), "capability", c.Name(), "error", err)...)
				}
				return err
			}}})
	}
	if sc.restore != nil {
		// The restored guest runs: its agent gives it its identity (a
		// fork), the clock and entropy, before anyone may use the VM.
		steps = append(steps, Step{Name: StepGuestResume,
			Do: func(ctx context.Context) error { return s.resumeGuest(ctx, sc, op) },
			Undo: func(context.Context) error {
				if !sc.restore.fork {
					return nil
				}
				return identity.RemovePins(s.layout.KnownHosts(), sc.v.GuestIP, sc.v.Name)
			}})
	}
	steps = append(steps, Step{Name: StepRecordRunning, Do: func(ctx context.Context) error {
		if sc.restore != nil && sc.restore.fork {
			// From now on the VM boots its own disk.
			if err := s.store.SetOriginDone(ctx, sc.v.ID); err != nil {
				return err
			}
		}
		sc.v.State, sc.v.Runtime.StartedAt = model.StateRunning, time.Now().UTC()
		return s.store.UpdateVM(ctx, sc.v)
	}})
	return steps
}

// StartVM starts a VM. A running VM is returned as is.
func (s *Service) StartVM(ctx context.Context, ref string) (*model.VM, error) {
	return s.runOp(ctx, ref, "vm.start", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		_, err := s.startLocked(ctx, v, op)
		return err
	})
}

// startLocked runs the start steps; the caller holds the VM's lock. Every
// error names the VM's log. A fork's first start restores its snapshot.
func (s *Service) startLocked(ctx context.Context, v *model.VM, op *operation) (*model.VM, error) {
	if s.alive(v) {
		return s.startWith(ctx, v, op, startOptions{}) // says what it is
	}
	plan, err := s.pendingRestore(ctx, v)
	if err != nil {
		return v, withLog(v, err)
	}
	if plan == nil {
		return s.startWith(ctx, v, op, startOptions{})
	}
	unlock, err := s.locks.lock(ctx, plan.sn.ID) // against a delete of the snapshot meanwhile
	if err != nil {
		return v, withLog(v, fmt.Errorf("waiting for snapshot %q: %w", plan.sn.Name, err))
	}
	defer unlock()
	op.Note(StageRestoreFrom, fmt.Sprintf("snapshot %q (%s) taken %s of vm %q: a fork's first start", plan.sn.Name, plan.sn.ID, plan.sn.CreatedAt.Format(time.RFC3339), plan.sn.VMName))
	return s.startWith(ctx, v, op, startOptions{restore: plan})
}

// startOptions are how a start differs from a plain boot.
type startOptions struct {
	// restore, if set, is the snapshot the VM is launched from instead of
	// booting (issue 12).
	restore *restorePlan
	// memoryFile boots the VM with its RAM in a file in its dir, on a
	// driver that can keep that file as a snapshot's memory (a warm
	// image's template: its snapshot then takes no copy of the RAM, and
	// restores map it instead of loading it).
	memoryFile bool
}

// startWith is startLocked; with restore, the VM is launched restoring
// that snapshot instead of booting (issue 12).
func (s *Service) startWith(ctx context.Context, v *model.VM, op *operation, opts startOptions) (*model.VM, error) {
	alive := s.alive(v)
	if alive && v.State == model.StateRunning {
		op.Note(StageAlreadyRunning, fmt.Sprintf("pid %d", v.Runtime.PID))
		op.log.Info("vm already running", "pid", v.Runtime.PID)
		return v, nil
	}
	if alive && v.State == model.StatePaused {
		return v, errdefs.FailedPrecondition("vm %q is paused (hint: banger vm resume %s)", v.Name, v.Name)
	}
	vsockPath := v.Runtime.VsockPath // kept across restarts, not recomputed
	if v.Runtime != (model.Runtime{}) {
		// A VMM left by a start whose rollback failed, a stop cut short, or
		// a VMM that died: end and release it first, never run two on one
		// disk.
		op.Note(StageVMMLeftover, fmt.Sprintf("pid %d alive=%v from an earlier run (state %s): cleaning up first", v.Runtime.PID, alive, v.State))
		if err := s.teardown(ctx, v, op, ""); err != nil {
			return v, withLog(v, err)
		}
	}
	sc, err := s.startContext(ctx, v, vsockPath)
	if err != nil {
		return v, s.recordStartFailure(ctx, v, op, err)
	}
	if opts.restore != nil {
		sc.restore = opts.restore
		sc.spec.Restore = &vmm.RestoreSpec{Dir: opts.restore.sn.Dir}
	} else if _, ok := sc.drv.(vmm.MemoryFileSnapshotter); ok && opts.memoryFile {
		sc.spec.MemoryFile = layout.VMDir(v.VMDir).MemoryFile()
	}
	// Record the names before the host is touched, so whatever a crash
	// leaves behind can be found and removed; the pid is recorded the
	// moment the VMM process exists, before the driver waits on it.
	v.State, v.LastError, v.LastExit = model.StateStarting, "", nil
	v.Runtime = model.Runtime{ControlSocket: sc.spec.ControlSocket, VsockPath: sc.spec.VsockPath, VsockCID: sc.spec.VsockCID,
		Tap: sc.spec.Tap, DMName: dmNameFor(v), AgentSocket: sc.spec.AgentSocket, MemoryFile: sc.spec.MemoryFile}
	if err := s.store.UpdateVM(ctx, v); err != nil {
		return v, s.recordStartFailure(ctx, v, op, err)
	}
	sc.spec.OnSpawn = func(p vmm.Process) error {
		v.Runtime.PID, v.Runtime.PIDStartTime, v.Runtime.Accel = p.PID, p.StartTime, sc.info.Accel
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		return s.store.UpdateVM(wctx, v)
	}
	sc.spec.OnExit = s.exits.put
	if err := RunSteps(ctx, s.buildStartSteps(op, sc), op); err != nil {
		return v, s.recordStartFailure(ctx, v, op, err)
	}
	s.watchVMM(v)
	op.log.Info("vm running", "pid", v.Runtime.PID, "accel", v.Runtime.Accel)
	return v, nil
}

// startContext resolves what a start needs: the driver, the image, the
// spec with every derived name, the kernel the driver boots; and has the
// driver validate the spec.
func (s *Service) startContext(ctx context.Context, v *model.VM, vsockPath string) (*startCtx, error) {
	drv, err := s.driver(v.VMM)
	if err != nil {
		return nil, err
	}
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return nil, fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	spec, err := s.startSpec(v, img, vsockPath)
	if err != nil {
		return nil, err
	}
	info := drv.Probe(ctx) // once per start: it may run the VMM binary
	s.probes.remember(info)
	if spec.Kernel, err = kernelFor(info, img); err != nil {
		return nil, err
	}
	if err := drv.Validate(spec); err != nil {
		return nil, err
	}
	return &startCtx{v: v, drv: drv, spec: spec, info: info}, nil
}

// recordedContext is the start context of v as recorded: what teardown
// releases. A driver this daemon lacks fails each release that needs it.
func (s *Service) recordedContext(v *model.VM) *startCtx {
	drv, err := s.driver(v.VMM)
	if err != nil {
		drv = missingDriver{kind: v.VMM, err: err}
	}
	return &startCtx{v: v, drv: drv, spec: s.runtimeSpec(v)}
}

// withLog makes err a start error naming the VM's log, keeping its class.
func withLog(v *model.VM, err error) error {
	return errdefs.WithClass(errdefs.ClassOf(err), fmt.Errorf("start vm %q: %w (vm log: %s)", v.Name, err, v.LogPath))
}

// recordStartFailure records state=error with the message on a context
// that outlives the request, and clears the runtime: its handles are dead
// once the rollback is complete. If an undo failed, the runtime is kept
// instead, so that the VMM or tap it could not remove is not orphaned: the
// next start, stop or delete (or the daemon's reconcile) finishes the job.
// The error returned is the start's, with its class, naming the VM's log; a
// failed write is logged, not returned.
func (s *Service) recordStartFailure(ctx context.Context, v *model.VM, op *operation, cause error) error {
	err := withLog(v, cause)
	v.State, v.LastError = model.StateError, err.Error()
	var se *StepError
	if !errors.As(cause, &se) || se.RolledBack() {
		v.Runtime = model.Runtime{}
	} else {
		op.log.Warn("rollback incomplete: keeping the runtime for a later cleanup", append(vmAttrs(v), "undo_errors", errors.Join(se.UndoErrs...))...)
	}
	wctx, cancel := context.WithTimeout(store.Recovery(context.WithoutCancel(ctx)), recordTimeout) // a rollback: may use the reserve
	defer cancel()
	if werr := s.store.UpdateVM(wctx, v); werr != nil {
		op.log.Warn("could not record the failed start", append(vmAttrs(v), "error", werr, "start_error", err)...)
	}
	return err
}

// startSpec derives every per-VM name from the short ID, once; a recorded
// vsock path (vsockPath) is kept. The vsock CID derives from the guest IP.
func (s *Service) startSpec(v *model.VM, img *model.Image, vsockPath string) (vmm.Spec, error) {
	short := v.Short()
	spec := s.runtimeSpec(v)
	spec.Kernel, spec.Initrd = img.KernelPath, img.InitrdPath
	spec.KernelArgs = strings.TrimSpace(baseKernelArgs + " " + img.Cmdline)
	spec.ControlSocket = s.layout.VMMSocket(short)
	spec.VsockPath = vsockPath
	if spec.VsockPath == "" {
		spec.VsockPath = s.layout.VsockPath(short)
	}
	spec.Tap = ""
	if s.cfg.Network != nil {
		spec.Tap = layout.TapName(short)
	}
	cid, err := network.CIDFor(v.GuestIP)
	if err != nil {
		return spec, err
	}
	spec.VsockCID = cid
	spec.LogCap = s.cfg.VMLogCap
	if sc := s.agentSocketFor(v); sc != "" {
		spec.AgentSocket = sc
	}
	for _, p := range []string{spec.ControlSocket, spec.VsockPath, spec.AgentSocket} {
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
		RootDisk: s.diskPath(v), RootDiskFormat: diskFormat(v), ConfigDisk: s.configDiskFor(v),
		ControlSocket: v.Runtime.ControlSocket, VsockPath: v.Runtime.VsockPath, VsockCID: v.Runtime.VsockCID,
		Tap: v.Runtime.Tap, MAC: network.MACFor(v.ID), LogPath: v.LogPath, VMDir: v.VMDir,
		AgentSocket: v.Runtime.AgentSocket, MemoryFile: v.Runtime.MemoryFile,
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
