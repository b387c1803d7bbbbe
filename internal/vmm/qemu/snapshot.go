package qemu

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/vmm"
)

var (
	_ vmm.Pauser                = (*Driver)(nil)
	_ vmm.MemoryFileSnapshotter = (*Driver)(nil)
)

// StateFile is the snapshot's state file: QEMU's migration stream (RAM
// and every device's state) as QMP migrate writes it; without the RAM when
// the snapshot has a MemoryFile.
const StateFile = "state.qemu"

// MemoryFile is the guest's RAM in a snapshot saved with
// SaveSnapshotMovingMemory.
const MemoryFile = "memory.ram"

// ramBackend is the id of the memory backend of a VM whose RAM is a file:
// QEMU's own name for the RAM of a pc/q35 machine.
const ramBackend = "pc.ram"

// SnapshotTimeout bounds saving or loading a snapshot (the context may
// bound it further). Under TCG a 1 GiB guest saves in a few seconds.
const SnapshotTimeout = 5 * time.Minute

// migrationFD is the name the driver gives the snapshot file's descriptor
// in QEMU (QMP getfd), which the migration URI "fd:<name>" then uses.
const migrationFD = "banger-snapshot"

// Pause stops the guest's vCPUs (QMP stop).
func (d *Driver) Pause(ctx context.Context, spec vmm.Spec) error {
	if _, err := d.run(ctx, spec, "stop", nil); err != nil {
		return fmt.Errorf("qemu: pause: %w", err)
	}
	return nil
}

// Resume lets the guest run again (QMP cont); it also restarts a VM whose
// snapshot was just saved (QEMU's "postmigrate" state).
func (d *Driver) Resume(ctx context.Context, spec vmm.Spec) error {
	if _, err := d.run(ctx, spec, "cont", nil); err != nil {
		return fmt.Errorf("qemu: resume: %w", err)
	}
	return nil
}

// status is the VM's QMP run state ("running", "paused", "postmigrate",
// "prelaunch", "inmigrate"...).
func status(mon *qmp.SocketMonitor) (string, error) {
	var r struct {
		Return struct {
			Status string `json:"status"`
		} `json:"return"`
	}
	if err := command(mon, "query-status", nil, &r); err != nil {
		return "", err
	}
	return r.Return.Status, nil
}

// SaveSnapshot migrates the paused VM into dir/StateFile. The file is
// opened here (O_EXCL, mode 0600) and handed to QEMU over the QMP socket
// (getfd, SCM_RIGHTS), then QMP migrate writes to "fd:<name>": no shell
// and no path goes through QEMU (QEMU 7.2 has no file: URI; exec: would run
// a shell). The VM is left in QEMU's "postmigrate" state: paused, and
// Resume restarts it.
func (d *Driver) SaveSnapshot(ctx context.Context, spec vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	return d.save(ctx, spec, dir, false)
}

// SaveSnapshotMovingMemory saves a VM booted with spec.MemoryFile: QEMU's
// x-ignore-shared capability leaves the shared RAM out of the state file
// (a few hundred KiB of device state and firmware remain), and the RAM
// file, flushed, is moved into dir as MemoryFile. The VM must then be
// ended, never resumed.
func (d *Driver) SaveSnapshotMovingMemory(ctx context.Context, spec vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	if spec.MemoryFile == "" {
		return vmm.SnapshotMeta{}, errdefs.FailedPrecondition("qemu: snapshot: the vm was not booted with its ram in a file")
	}
	return d.save(ctx, spec, dir, true)
}

func (d *Driver) save(ctx context.Context, spec vmm.Spec, dir string, moveMemory bool) (vmm.SnapshotMeta, error) {
	started := time.Now()
	info := d.Probe(ctx)
	meta, err := vmm.NewSnapshotMeta(vmm.KindQEMU, cmp.Or(d.Machine, Machine), spec, info.Features.Vsock && spec.VsockCID >= 3)
	if err != nil {
		return meta, fmt.Errorf("qemu: snapshot: %w", err)
	}
	path := filepath.Join(dir, StateFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return meta, errdefs.AlreadyExists("qemu: snapshot: %q already holds a snapshot (hint: save into a new dir)", dir)
	}
	if err != nil {
		return meta, fmt.Errorf("qemu: snapshot: %w", err)
	}
	ok := false
	defer func() {
		_ = f.Close() // closed again after a successful sync; the outcome is known
		if !ok {
			_ = os.Remove(path) // the error returned says what failed; a partial file is useless
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, SnapshotTimeout)
	defer cancel()
	err = d.session(ctx, spec, func(mon *qmp.SocketMonitor) error {
		st, err := status(mon)
		if err != nil {
			return err
		}
		if st != "paused" && st != "postmigrate" {
			return errdefs.FailedPrecondition("vm is %s, not paused (hint: pause it before saving a snapshot)", st)
		}
		// QEMU caps migration at 128 MiB/s by default, for live
		// migration over a network; a paused VM to a local file may go
		// as fast as the disk takes it.
		if err := command(mon, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
			return err
		}
		// Set either way: a VMM keeps capabilities between migrations.
		if err := setIgnoreShared(mon, moveMemory); err != nil {
			return err
		}
		if err := commandWithFile(mon, "getfd", map[string]any{"fdname": migrationFD}, f); err != nil {
			return err
		}
		if err := command(mon, "migrate", map[string]any{"uri": "fd:" + migrationFD}, nil); err != nil {
			return err
		}
		return waitMigration(ctx, mon, "query-migrate")
	})
	if err != nil {
		// A migration cut short by ctx may still run: stop it writing
		// to the file that is about to be removed.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), qmpTimeout)
		defer ccancel()
		_, _ = d.run(cctx, spec, "migrate_cancel", nil) // best effort; the error below says what failed
		return meta, fmt.Errorf("qemu: snapshot: %w", err)
	}
	if err := f.Sync(); err != nil {
		return meta, fmt.Errorf("qemu: snapshot: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return meta, fmt.Errorf("qemu: snapshot: %w", err)
	}
	meta.Files = []string{StateFile}
	meta.SizeBytes = fi.Size()
	if moveMemory {
		n, err := moveMemoryFile(spec.MemoryFile, filepath.Join(dir, MemoryFile))
		if err != nil {
			return meta, fmt.Errorf("qemu: snapshot: %w", err)
		}
		defer func() {
			if !ok { // back where the VM's spec says it is
				_ = os.Rename(filepath.Join(dir, MemoryFile), spec.MemoryFile)
			}
		}()
		meta.Files = append(meta.Files, MemoryFile)
		meta.MemoryFile = MemoryFile
		meta.SizeBytes += n
	}
	meta.Created = time.Now().UTC()
	meta.SaveSeconds = time.Since(started).Seconds()
	if err := vmm.WriteSnapshotMeta(dir, meta); err != nil {
		return meta, fmt.Errorf("qemu: snapshot: %w", err)
	}
	ok = true
	return meta, nil
}

// setIgnoreShared turns QEMU's x-ignore-shared migration capability on or
// off: on, a migration leaves out RAM mapped shared from a file.
func setIgnoreShared(mon *qmp.SocketMonitor, on bool) error {
	return command(mon, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	}, nil)
}

// moveMemoryFile flushes a paused guest's RAM file and moves it to dst (in
// the same file system: the state dir), returning the bytes it takes on
// disk.
func moveMemoryFile(src, dst string) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("guest ram file: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("guest ram file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("guest ram file: %w", err)
	}
	if err := os.Rename(src, dst); err != nil {
		return 0, fmt.Errorf("guest ram file: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512, nil
	}
	return fi.Size(), nil
}

// waitMigration polls the migration's status until it completes, fails or
// ctx ends (then it cancels the migration).
func waitMigration(ctx context.Context, mon *qmp.SocketMonitor, query string) error {
	for {
		var r struct {
			Return struct {
				Status    string `json:"status"`
				ErrorDesc string `json:"error-desc"`
			} `json:"return"`
		}
		if err := command(mon, query, nil, &r); err != nil {
			return err
		}
		switch r.Return.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", r.Return.Status, r.Return.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			_ = command(mon, "migrate_cancel", nil, nil) // best effort; the ctx error is returned
			return fmt.Errorf("migration not done: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// restoreMeta checks, before anything starts, that the snapshot spec
// restores from was taken with this VM's driver, shape and kernel.
func (d *Driver) restoreMeta(spec vmm.Spec, vsock bool) (vmm.SnapshotMeta, error) {
	vm, err := vmm.NewSnapshotMeta(vmm.KindQEMU, cmp.Or(d.Machine, Machine), spec, vsock)
	if err != nil {
		return vm, errdefs.FailedPrecondition("qemu: %w", err)
	}
	snap, err := vmm.CheckRestoreDir(spec.Restore.Dir, vm)
	if err != nil {
		return snap, fmt.Errorf("qemu: restore: %w", err)
	}
	want := []string{StateFile}
	if snap.MemoryFile != "" {
		want = append(want, MemoryFile)
	}
	if !slices.Equal(snap.Files, want) || (snap.MemoryFile != "" && snap.MemoryFile != MemoryFile) {
		return snap, errdefs.FailedPrecondition("qemu: restore: snapshot in %q lists files %q (memory file %q), want %q", spec.Restore.Dir, snap.Files, snap.MemoryFile, want)
	}
	return snap, nil
}

// loadSnapshot feeds the snapshot's state file to a QEMU started with
// -incoming defer (handing it the open file, as SaveSnapshot does) and
// waits until the VM is paused at the snapshot's instant.
func (d *Driver) loadSnapshot(ctx context.Context, spec vmm.Spec) error {
	f, err := os.Open(filepath.Join(spec.Restore.Dir, StateFile))
	if err != nil {
		return errdefs.FailedPrecondition("restore: %w", err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(ctx, SnapshotTimeout)
	defer cancel()
	return d.session(ctx, spec, func(mon *qmp.SocketMonitor) error {
		// The stream of a snapshot with a memory file has no RAM: the
		// capability must match the saving side's.
		if err := setIgnoreShared(mon, spec.MemoryFile != ""); err != nil {
			return err
		}
		if err := commandWithFile(mon, "getfd", map[string]any{"fdname": migrationFD}, f); err != nil {
			return err
		}
		if err := command(mon, "migrate-incoming", map[string]any{"uri": "fd:" + migrationFD}, nil); err != nil {
			return err
		}
		// QEMU exits if the stream does not load; otherwise the state
		// goes from "inmigrate" to "paused" (-S) once it has loaded.
		for {
			st, err := status(mon)
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			if st == "paused" {
				return nil
			}
			if st != "inmigrate" {
				return fmt.Errorf("restore: vm is %s after loading the snapshot, want paused", st)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("restore: snapshot not loaded: %w", ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
}

// guidPattern is a GUID as QEMU's vmgenid device takes it.
var guidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func checkGenerationID(id string) error {
	if id != "" && !guidPattern.MatchString(id) {
		return errdefs.InvalidArgument("generation id %q is not a GUID (hint: xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in hex)", id)
	}
	return nil
}

// vmgenidArgs is the VM generation ID device: the GUID the spec gives, or
// a fresh one QEMU picks at each start ("auto"). The GUID is not part of
// the migrated state: a restored guest sees the restoring QEMU's GUID, so
// it learns it was restored (ACPI notification, Linux's vmgenid driver).
func vmgenidArgs(spec vmm.Spec) []string {
	return []string{"-device", "vmgenid,id=vmgenid0,guid=" + cmp.Or(spec.GenerationID, "auto")}
}

// session runs fn on one QMP connection (a descriptor passed with getfd
// belongs to the connection's monitor), bounded by ctx.
func (d *Driver) session(ctx context.Context, spec vmm.Spec, fn func(*qmp.SocketMonitor) error) error {
	mon, err := qmp.NewSocketMonitor("unix", spec.ControlSocket, qmpTimeout)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		if err := mon.Connect(); err != nil {
			done <- fmt.Errorf("qmp: %w", err)
			return
		}
		done <- fn(mon)
	}()
	select {
	case err := <-done:
		_ = mon.Disconnect() // fn's outcome is known; closing cannot change it
		return err
	case <-ctx.Done():
		_ = mon.Disconnect() // unblocks fn
		return fmt.Errorf("qmp: %w", ctx.Err())
	}
}

func command(mon *qmp.SocketMonitor, name string, args, out any) error {
	return commandOut(mon, name, args, nil, out)
}

// commandWithFile runs one QMP command, passing f's descriptor with it if
// f is not nil, and decodes the answer into out if out is not nil.
func commandWithFile(mon *qmp.SocketMonitor, name string, args any, f *os.File) error {
	return commandOut(mon, name, args, f, nil)
}

func commandOut(mon *qmp.SocketMonitor, name string, args any, f *os.File, out any) error {
	cmd, err := json.Marshal(qmp.Command{Execute: name, Args: args})
	if err != nil {
		return err
	}
	raw, err := mon.RunWithFile(cmd, f)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", name, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("qmp %s: %w", name, err)
		}
	}
	return nil
}
