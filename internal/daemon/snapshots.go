package daemon

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Snapshots (issue 12). A snapshot is a dir under <state>/snapshots/<id>/
// (mode 0700) holding the driver's state files and snapshot.json
// (SaveSnapshot) and a clone of the VM's root disk taken while the VM was
// paused (SnapshotDiskFile), plus a store record. It is an independent
// copy: deleting the VM keeps it; its image cannot be deleted while it
// exists.

// Steps of vm.snapshot and vm.restore.
const (
	StepSnapshotDir     = "snapshot.dir"
	StepSnapshotSave    = "snapshot.save"
	StepSnapshotDisk    = "snapshot.disk-clone"
	StepSnapshotRecord  = "snapshot.record"
	StepSnapshotStop    = "snapshot.stop"
	StepRestoreCheck    = "restore.check"
	StepRestoreDiscard  = "restore.discard-runtime"
	StepRestoreDisk     = "restore.disk"
	StageRestoreFrom    = "restore.from"
	SnapshotDiskFile    = "rootfs.ext4"
	snapshotNameTimeFmt = "20060102-150405"
)

// SnapshotsDir is where snapshot dirs live.
func (s *Service) SnapshotsDir() string { return filepath.Join(s.layout.StateDir, "snapshots") }

// snapshotter is v's driver as a Pauser and Snapshotter, or NotSupported.
func (s *Service) snapshotter(v *model.VM) (vmm.Pauser, vmm.Snapshotter, error) {
	p, err := s.pauser(v)
	if err != nil {
		return nil, nil, err
	}
	sn, ok := p.(vmm.Snapshotter)
	if !ok {
		return nil, nil, errdefs.NotSupported("the %s driver cannot snapshot a vm", v.VMM)
	}
	return p, sn, nil
}

// SnapshotOptions tune vm snapshot create.
type SnapshotOptions struct {
	Name string // empty: "<vm>-<UTC time>"
	Stop bool   // end the VM once saved instead of resuming it
	Kind string // model.SnapshotUser (empty) or model.SnapshotWarm
}

// CreateSnapshot pauses a running (or paused) VM, saves its memory and
// device state, clones its root disk at that instant, records the
// snapshot, then resumes the VM (a VM that was paused stays paused), or
// with opts.Stop kills its VMM (the state is saved and the disk flushed:
// nothing a graceful shutdown would keep is lost).
func (s *Service) CreateSnapshot(ctx context.Context, ref string, opts SnapshotOptions) (*model.Snapshot, error) {
	var out *model.Snapshot
	_, err := s.runOp(ctx, ref, "vm.snapshot", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		sn, err := s.snapshotLocked(ctx, v, op, opts)
		out = sn
		return err
	})
	return out, err
}

func (s *Service) snapshotLocked(ctx context.Context, v *model.VM, op *operation, opts SnapshotOptions) (*model.Snapshot, error) {
	name := opts.Name
	if name == "" {
		name = defaultName(v.Name, "-"+time.Now().UTC().Format(snapshotNameTimeFmt))
	}
	if err := ValidateName("snapshot", name); err != nil {
		return nil, err
	}
	if taken, err := s.store.SnapshotNameTaken(ctx, name); err != nil {
		return nil, err
	} else if taken {
		return nil, errdefs.AlreadyExists("snapshot %q already exists (hint: pick another name, or delete it first)", name)
	}
	alive := s.alive(v)
	if !alive || (v.State != model.StateRunning && v.State != model.StatePaused) {
		return nil, errdefs.FailedPrecondition("vm %q is %s: only a running or paused vm can be snapshotted (hint: banger vm start %s)", v.Name, v.State, v.Name)
	}
	pauser, saver, err := s.snapshotter(v)
	if err != nil {
		return nil, err
	}
	spec, err := s.snapshotSpec(ctx, v)
	if err != nil {
		return nil, err
	}
	wasPaused := v.State == model.StatePaused
	sn := &model.Snapshot{ID: system.NewID(), Name: name, VMID: v.ID, VMName: v.Name, ImageID: v.ImageID, VMM: v.VMM,
		VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB, Kernel: spec.Kernel, OwnerUID: ownerUID(ctx),
		Kind: cmp.Or(opts.Kind, model.SnapshotUser), DiskStrategy: string(diskKind(v)), DiskBytes: v.DiskBytes, GuestIP: v.GuestIP}
	sn.Dir = filepath.Join(s.SnapshotsDir(), sn.ID)
	var meta vmm.SnapshotMeta
	steps := []Step{
		{Name: StepSnapshotDir,
			Do: func(context.Context) error {
				if err := os.MkdirAll(s.SnapshotsDir(), 0o700); err != nil {
					return err
				}
				if err := os.Chmod(s.SnapshotsDir(), 0o700); err != nil {
					return err
				}
				if err := os.Mkdir(sn.Dir, 0o700); err != nil {
					return err
				}
				return os.Chmod(sn.Dir, 0o700) // not left to the umask
			},
			Undo: func(context.Context) error { return removeAllIn(s.SnapshotsDir(), sn.Dir) }},
	}
	if !wasPaused {
		steps = append(steps, Step{Name: StepVMMPause,
			Do: func(ctx context.Context) error {
				v.State = model.StatePaused // recorded first: see pauseLocked
				if err := s.store.UpdateVM(ctx, v); err != nil {
					return err
				}
				return pauser.Pause(ctx, spec)
			},
			Undo: func(ctx context.Context) error {
				if err := pauser.Resume(ctx, spec); err != nil {
					return err
				}
				v.State = model.StateRunning
				return s.store.UpdateVM(ctx, v)
			}})
	}
	steps = append(steps,
		Step{Name: StepSnapshotSave, Do: func(ctx context.Context) error {
			if mf, ok := saver.(vmm.MemoryFileSnapshotter); ok && opts.Stop && spec.MemoryFile != "" {
				// The VM's RAM is already a file: it becomes the
				// snapshot's, and the VM is ended below.
				meta, err = mf.SaveSnapshotMovingMemory(ctx, spec, sn.Dir)
				return err
			}
			meta, err = saver.SaveSnapshot(ctx, spec, sn.Dir)
			return err
		},
			Detail: func() string {
				if meta.MemoryFile != "" {
					return fmt.Sprintf("device state only; the guest's ram file became the snapshot's %s", meta.MemoryFile)
				}
				return ""
			}},
		// After the save: QEMU has flushed the disk, and the guest is
		// still stopped, so the clone is the disk at the saved instant.
		Step{Name: StepSnapshotDisk, Do: func(ctx context.Context) error {
			return s.cloneDisk(ctx, v, filepath.Join(sn.Dir, SnapshotDiskFile)) // in v's own format
		}},
		Step{Name: StepSnapshotRecord,
			Do: func(ctx context.Context) error {
				b, err := json.Marshal(meta)
				if err != nil {
					return err
				}
				sn.Meta = b
				if sn.SizeBytes, err = allocatedBytes(sn.Dir); err != nil {
					return err
				}
				return s.store.InsertSnapshot(ctx, sn)
			},
			Undo: func(ctx context.Context) error { return s.store.DeleteSnapshot(ctx, sn.ID) }},
	)
	if err := RunSteps(ctx, steps, op); err != nil {
		return nil, fmt.Errorf("snapshot vm %q: %w", v.Name, err)
	}
	op.log.Info("snapshot saved", "snapshot", sn.Name, "snapshot_id", sn.ID, "size_bytes", sn.SizeBytes, "save_seconds", meta.SaveSeconds)
	switch {
	case opts.Stop:
		op.Note(StepSnapshotStop, "--stop: the vmm is killed; its state is in the snapshot")
		if err := s.teardown(ctx, v, op, ""); err != nil {
			return sn, fmt.Errorf("snapshot %q saved, but vm %q was not stopped: %w", sn.Name, v.Name, err)
		}
	case wasPaused:
		// It stays paused, as it was.
	default:
		if err := s.resumeLocked(ctx, v, op); err != nil {
			return sn, fmt.Errorf("snapshot %q saved, but vm %q stays paused: %w (hint: banger vm resume %s)", sn.Name, v.Name, err, v.Name)
		}
	}
	return sn, nil
}

// snapshotSpec is v's spec as recorded, with the kernel and initrd it was
// started with: what the snapshot's meta hashes, and what a restore's
// Launch compares it with.
func (s *Service) snapshotSpec(ctx context.Context, v *model.VM) (vmm.Spec, error) {
	spec := s.runtimeSpec(v)
	d, err := s.driver(v.VMM)
	if err != nil {
		return spec, err
	}
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return spec, fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	if spec.Kernel, err = kernelFor(s.probes.get(ctx, d), img); err != nil {
		return spec, err
	}
	spec.Initrd = img.InitrdPath
	return spec, nil
}

// cloneFile copies src to dst (new, mode 0600), by reflink if it can.
func cloneFile(ctx context.Context, src, dst string) error {
	d := storage.Disk{Path: src}
	if err := (&storage.ReflinkDisk{}).Clone(ctx, d, dst); err == nil {
		return nil
	}
	return (&storage.CopyDisk{}).Clone(ctx, d, dst)
}

// allocatedBytes is what dir's files take on the host (sparse and shared
// extents counted as allocated).
func allocatedBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		}
		return nil
	})
	return n, err
}

// RestoreVM takes a VM back to the instant of a snapshot taken of it: its
// runtime, if any, is discarded (the VMM killed: its state is being
// replaced), its root disk replaced by a clone of the snapshot's, and it is
// started restoring the snapshot's memory and device state, so the guest
// goes on from that instant, its processes still running. The snapshot
// must match the VM's driver and machine shape.
func (s *Service) RestoreVM(ctx context.Context, ref, snapRef string) (*model.VM, error) {
	return s.runOp(ctx, ref, "vm.restore", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		sn, err := s.resolveSnapshot(ctx, snapRef)
		if err != nil {
			return err
		}
		unlock, err := s.locks.lock(ctx, sn.ID) // against a delete of the snapshot meanwhile
		if err != nil {
			return fmt.Errorf("waiting for snapshot %q: %w", sn.Name, err)
		}
		defer unlock()
		if _, err := s.store.ResolveSnapshot(ctx, sn.ID); err != nil {
			return err
		}
		return s.restoreLocked(ctx, v, op, sn)
	})
}

func (s *Service) restoreLocked(ctx context.Context, v *model.VM, op *operation, sn *model.Snapshot) error {
	op.Note(StageRestoreFrom, fmt.Sprintf("snapshot %q (%s) taken %s", sn.Name, sn.ID, sn.CreatedAt.Format(time.RFC3339)))
	check := func(context.Context) error {
		meta, err := vmm.ReadSnapshotMeta(sn.Dir)
		if err != nil {
			return err
		}
		// The shape is checked before anything is touched; Launch checks
		// the rest (kernel, devices) again against the spec it runs.
		here := meta
		here.Driver, here.VCPUs, here.MemoryMiB = v.VMM, v.VCPUs, v.MemoryMiB
		if err := vmm.CheckRestore(meta, here); err != nil {
			return fmt.Errorf("snapshot %q cannot restore into vm %q: %w", sn.Name, v.Name, err)
		}
		if sn.VMID != v.ID {
			return errdefs.FailedPrecondition("snapshot %q was taken of vm %q, not of %q (hint: a snapshot restores into the vm it was taken of; the guest inside still has that vm's address and identity)", sn.Name, sn.VMName, v.Name)
		}
		if _, _, err := s.snapshotter(v); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(sn.Dir, SnapshotDiskFile)); err != nil {
			return errdefs.FailedPrecondition("snapshot %q has no disk clone: %v (hint: delete it)", sn.Name, err)
		}
		return nil
	}
	steps := []Step{
		{Name: StepRestoreCheck, Do: check},
		{Name: StepRestoreDiscard, Do: func(ctx context.Context) error {
			if v.Runtime == (model.Runtime{}) && !s.alive(v) {
				return nil
			}
			return s.teardown(ctx, v, op, "")
		}},
		{Name: StepRestoreDisk, Do: func(ctx context.Context) error {
			if diskKind(v) == storage.KindDMSnapshot {
				return errdefs.NotSupported("vm %q has a dm-snapshot root disk, whose copy-on-write file cannot be replaced by a snapshot's disk yet (hint: restore into a vm with a file disk: qcow2, reflink or sparse-copy)", v.Name)
			}
			disk := s.diskPath(v)
			tmp := disk + ".restore"
			if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if err := cloneFile(ctx, filepath.Join(sn.Dir, SnapshotDiskFile), tmp); err != nil {
				return err
			}
			if err := os.Rename(tmp, disk); err != nil {
				return errors.Join(err, os.Remove(tmp))
			}
			return nil
		}},
	}
	if err := RunSteps(ctx, steps, op); err != nil {
		return fmt.Errorf("restore vm %q: %w", v.Name, err)
	}
	_, err := s.startWith(ctx, v, op, startOptions{restore: &restorePlan{sn: sn}})
	return err
}

// ListSnapshots returns the snapshots the caller may see, oldest first:
// its own, and the warm snapshots of the images it may use.
func (s *Service) ListSnapshots(ctx context.Context) ([]*model.Snapshot, error) {
	sns, err := s.store.ListSnapshots(ctx)
	if err != nil || privileged(ctx) {
		return sns, err
	}
	out := sns[:0]
	for _, sn := range sns {
		if mayAccess(ctx, sn.OwnerUID) {
			out = append(out, sn)
		} else if sn.Kind == model.SnapshotWarm {
			if img, err := s.store.ResolveImage(ctx, sn.ImageID); err == nil && checkImageAccess(ctx, img, true) == nil {
				out = append(out, sn)
			}
		}
	}
	return out, nil
}

// GetSnapshot resolves a snapshot by name, id or id prefix.
func (s *Service) GetSnapshot(ctx context.Context, ref string) (*model.Snapshot, error) {
	return s.resolveSnapshot(ctx, ref)
}

// DeleteSnapshot removes a snapshot's files, then its record (a failure
// part-way leaves the record, and a retry finishes).
func (s *Service) DeleteSnapshot(ctx context.Context, ref string) error {
	sn, err := s.resolveSnapshot(ctx, ref)
	if err != nil {
		return err
	}
	if !mayAccess(ctx, sn.OwnerUID) { // a warm snapshot others may use, not delete
		return errdefs.PermissionDenied("snapshot %q is image %q's warm start: only its owner or root may delete it", sn.Name, sn.ImageID)
	}
	unlock, err := s.locks.lock(ctx, sn.ID)
	if err != nil {
		return fmt.Errorf("waiting for snapshot %q: %w", sn.Name, err)
	}
	defer unlock()
	// A fork whose first start is still to come restores this snapshot.
	if forks, err := s.store.VMsPendingRestore(ctx, sn.ID); err != nil {
		return err
	} else if len(forks) > 0 {
		return errdefs.FailedPrecondition("snapshot %q is still to be restored by vm %s, made from it and not yet started (hint: start or delete those vms first)", sn.Name, strings.Join(quoteAll(forks), ", "))
	}
	ctx = context.WithoutCancel(ctx)
	if err := removeAllIn(s.SnapshotsDir(), sn.Dir); err != nil {
		return fmt.Errorf("delete snapshot %q: %w", sn.Name, err)
	}
	if err := s.store.DeleteSnapshot(ctx, sn.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("delete snapshot %q: %w", sn.Name, err)
	}
	s.log.Info("snapshot deleted", "snapshot", sn.Name, "snapshot_id", sn.ID)
	return nil
}

// removeOrphanSnapshotDirs removes the snapshot dirs no record names: what
// a daemon that died during a snapshot left.
func (s *Service) removeOrphanSnapshotDirs(ctx context.Context) error {
	entries, err := os.ReadDir(s.SnapshotsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sns, err := s.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, sn := range sns {
		known[sn.Dir] = true
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(s.SnapshotsDir(), e.Name())
		if known[p] {
			continue
		}
		if err := removeAllIn(s.SnapshotsDir(), p); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("removed a snapshot dir no record names", "dir", p)
	}
	return errors.Join(errs...)
}

// ImageName is the name of image id (empty and an error if it is gone).
func (s *Service) ImageName(ctx context.Context, id string) (string, error) {
	return s.store.ImageName(ctx, id)
}

// quoteAll is names, each quoted.
func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = fmt.Sprintf("%q", n)
	}
	return out
}
